"""Where to grow: Naive vs MaxEigenValue vs AmplitudeFactor (the talk's Algorithms 1 and 2).

Pure growth on the talk's synthetic task (x ~ N(0, I₅₀), y = argmax_k sin(k·Σx)): a thin
network 50→1→1→10, then at every step one TINY neuron where the strategy says, with its
amplitude factor, followed by the best update δW* of every layer with its own amplitude — no
gradient step. Several seeds; writes a table and an SVG plot of test accuracy against
parameters.

    python examples/strategies.py --seeds 0 1 2 --steps 20 --out examples/out
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _common import grow_curve, markdown_table, mean_curve, write_svg

from daggrow.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="examples/out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = {"naive": "Naive", "max_eigenvalue": "MaxEigenValue", "amplitude": "AmplitudeFactor"}
    series, rows = {}, []
    for strategy, label in names.items():
        runs = []
        for seed in args.seeds:
            data = load_dataset(args.dataset, seed=seed)
            runs.append(grow_curve(data, seed=seed, steps=args.steps, mode="pure", strategy=strategy,
                                   hidden=(1, 1), kinds=("expand_node",), neurons_per_step=1))
        curves = [r["curve"] for r in runs]
        series[label] = mean_curve(curves)
        finals = [c[-1] for c in curves]
        rows.append([label, len(args.seeds), f"{statistics.mean(p for p, _ in finals):,.0f}",
                     f"{statistics.mean(a for _, a in finals):.4f}",
                     f"{statistics.pstdev([a for _, a in finals]):.4f}",
                     f"{statistics.mean(r['seconds'] for r in runs):.1f}"])
        print(label, [f"{a:.3f}" for _, a in finals])
    table = markdown_table(["strategy", "seeds", "final params (mean)", "test acc (mean)", "test acc (sd)",
                            "seconds/run"], rows)
    (out / f"strategies_{args.dataset}.md").write_text(table + "\n")
    write_svg(out / f"strategies_{args.dataset}.svg", series, title=f"pure growth on {args.dataset}",
              xlabel="parameters", ylabel="test accuracy")
    print(table)


if __name__ == "__main__":
    main()
