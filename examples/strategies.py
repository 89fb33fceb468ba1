"""Where to grow: Naive vs MaxEigenValue vs AmplitudeFactor (the talk's Algorithms 1 and 2).

Pure growth on the talk's synthetic task (x ~ N(0, I₅₀), y = argmax_k sin(k·Σx)): a thin
network 50→1→1→10, then at every step one TINY neuron where the strategy says, with its
amplitude factor, followed by the best update δW* of every layer with its own amplitude — no
gradient step. Several seeds; writes a table and an SVG plot of test accuracy against
parameters.

    python examples/strategies.py --seeds 0 1 2 --steps 20 --out examples/out
"""

from __future__ import annotations

from _common import compare, example_arguments, grow_curve, markdown_table, save_comparison


def main() -> None:
    args = example_arguments(__doc__, dataset="synthetic", steps=20)
    names = {"naive": "Naive", "max_eigenvalue": "MaxEigenValue", "amplitude": "AmplitudeFactor"}
    series, summaries = compare(names, args.seeds, args.dataset, lambda strategy, data, seed: grow_curve(
        data, seed=seed, steps=args.steps, mode="pure", strategy=strategy, hidden=(1, 1), kinds=("expand_node",),
        neurons_per_step=1))
    rows = [[s["label"], len(args.seeds), f"{s['params']:,.0f}", f"{s['accuracy']:.4f}", f"{s['sd']:.4f}",
             f"{s['seconds']:.1f}"] for s in summaries]
    table = markdown_table(["strategy", "seeds", "final params (mean)", "test acc (mean)", "test acc (sd)",
                            "seconds/run"], rows)
    save_comparison(args.out, f"strategies_{args.dataset}", table, series, f"pure growth on {args.dataset}")


if __name__ == "__main__":
    main()
