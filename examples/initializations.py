"""How to initialise new neurons: Random vs GradMax vs TINY, pure growth (the talk's Algorithm 3).

A thin network (input→1→1→classes), then at every step one new neuron per step in the next
layer (round robin), initialised by each method with its amplitude factor; no gradient step
and no best update: only neuron additions. GradMax's zero fan-in leaves the function unchanged
(its amplitude factor has no effect), so it cannot improve the loss without training, as the
talk notes. Writes a table and an SVG plot of test accuracy against parameters.

    python examples/initializations.py --dataset digits --seeds 0 1 2 --steps 30 --out examples/out
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _common import grow_curve, markdown_table, mean_curve, write_svg

from daggrow.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="examples/out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = {"random": "Random", "gradmax": "GradMax", "tiny": "TINY"}
    series, rows = {}, []
    for init, label in names.items():
        runs = []
        for seed in args.seeds:
            data = load_dataset(args.dataset, seed=seed)
            runs.append(grow_curve(data, seed=seed, steps=args.steps, mode="grow_only", strategy="naive", init=init,
                                   hidden=(1, 1), kinds=("expand_node",), neurons_per_step=1, activation="selu"))
        curves = [r["curve"] for r in runs]
        series[label] = mean_curve(curves)
        finals = [c[-1] for c in curves]
        rows.append([label, len(args.seeds), f"{statistics.mean(len(c) - 1 for c in curves):.1f}",
                     f"{statistics.mean(p for p, _ in finals):,.0f}", f"{statistics.mean(a for _, a in finals):.4f}",
                     f"{statistics.pstdev([a for _, a in finals]):.4f}"])
        print(label, [f"{a:.3f}" for _, a in finals])
    table = markdown_table(["init", "seeds", "growth steps taken", "final params (mean)", "test acc (mean)",
                            "test acc (sd)"], rows)
    (out / f"initializations_{args.dataset}.md").write_text(table + "\n")
    write_svg(out / f"initializations_{args.dataset}.svg", series, title=f"pure growth (no training) on {args.dataset}",
              xlabel="parameters", ylabel="test accuracy")
    print(table)


if __name__ == "__main__":
    main()
