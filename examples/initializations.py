"""How to initialise new neurons: Random vs GradMax vs TINY, pure growth (the talk's Algorithm 3).

A thin network (input→1→1→classes), then at every step one new neuron per step in the next
layer (round robin), initialised by each method with its amplitude factor; no gradient step
and no best update: only neuron additions. GradMax's zero fan-in leaves the function unchanged
(its amplitude factor has no effect), so it cannot improve the loss without training, as the
talk notes. Writes a table and an SVG plot of test accuracy against parameters.

    python examples/initializations.py --dataset digits --seeds 0 1 2 --steps 30 --out examples/out
"""

from __future__ import annotations

from _common import compare, example_arguments, grow_curve, markdown_table, save_comparison


def main() -> None:
    args = example_arguments(__doc__, dataset="digits", steps=30)
    names = {"random": "Random", "gradmax": "GradMax", "tiny": "TINY"}
    series, summaries = compare(names, args.seeds, args.dataset, lambda init, data, seed: grow_curve(
        data, seed=seed, steps=args.steps, mode="grow_only", strategy="naive", init=init, hidden=(1, 1),
        kinds=("expand_node",), neurons_per_step=1, activation="selu"))
    rows = [[s["label"], len(args.seeds), f"{sum(len(c) - 1 for c in s['curves']) / len(s['curves']):.1f}",
             f"{s['params']:,.0f}", f"{s['accuracy']:.4f}", f"{s['sd']:.4f}"] for s in summaries]
    table = markdown_table(["init", "seeds", "growth steps taken", "final params (mean)", "test acc (mean)",
                            "test acc (sd)"], rows)
    save_comparison(args.out, f"initializations_{args.dataset}", table, series, f"pure growth (no training) on {args.dataset}")


if __name__ == "__main__":
    main()
