"""The ``daggrow`` command: ``grow``, ``report``, ``show``. It only parses and wires things up.

    daggrow grow --dataset synthetic --out runs/demo
    daggrow report runs/demo
    daggrow show runs/demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import DaggrowError


def _cmd_grow(args: argparse.Namespace) -> int:
    from .grow.runner import RunConfig, run_growth

    config = RunConfig(
        dataset=args.dataset, strategy=args.strategy, init=args.init, steps=args.steps,
        neurons_per_step=args.neurons_per_step, epochs_between=args.epochs_between, mode=args.mode,
        model=args.model, hidden=args.hidden, channels=args.channels, activation=args.activation, kinds=args.kinds, lr=args.lr, batch_size=args.batch_size,
        weight_decay=args.weight_decay, keep_best=args.keep_best,
        final_epochs=args.final_epochs, max_parameters=args.max_parameters, seed=args.seed, device=args.device,
        out=args.out,
    )
    result = run_growth(config, progress=not args.quiet)
    graph = result.pop("graph")
    if not args.quiet:
        from .history import History

        print(History.load(result["out"]).summary_table())
        print()
        print(graph.summary())
        print()
    acc = result["test_accuracy"]
    print(f"{result['dataset']}: {result['growth_steps']} growth steps, {result['parameters']:,} parameters, "
          f"test accuracy {'-' if acc is None else f'{acc:.4f}'}, test loss {result['test_loss']:.4f}, "
          f"{result['seconds']:.1f} s")
    if result.get("best_epoch") is not None:
        print(f"kept the weights of final epoch {result['best_epoch']} of {args.final_epochs} "
              "(best validation accuracy)")
    print(f"run folder: {result['out']}  (report: {Path(result['out']) / 'report.html'})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .history import History, write_report

    history = History.load(args.run_dir)
    path = write_report(history, args.run_dir)
    print(path)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .graph import Graph

    path = Path(args.path)
    if (path / "history.json").exists():
        from .history import History

        print(History.load(path).summary_table())
        print()
    # a run folder keeps its final graph in graph/; anything else is read as a graph folder
    graph_dir = path / "graph" if (path / "graph").is_dir() and not (path / "graph.json").exists() else path
    print(Graph.load(graph_dir).summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daggrow", description="Grow neural networks where their "
                                     "expressivity bottleneck is.")
    parser.add_argument("--version", action="version", version=f"daggrow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    grow = sub.add_parser("grow", help="grow a network on a built-in data set",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    grow.add_argument("--dataset", default="synthetic", choices=["synthetic", "digits", "mnist1d"])
    grow.add_argument("--strategy", default="amplitude",
                      choices=["amplitude", "naive", "max_eigenvalue", "bottleneck_node", "efficiency",
                               "information_criterion"])
    grow.add_argument("--init", default="tiny", choices=["tiny", "gradmax", "north", "random", "zero"])
    grow.add_argument("--steps", type=int, default=20, help="growth steps")
    grow.add_argument("--neurons-per-step", type=int, default=2, help="directions added per step (ReLU: ×2 neurons)")
    grow.add_argument("--epochs-between", type=int, default=1, help="training epochs after each growth step")
    grow.add_argument("--mode", default="sgd", choices=["sgd", "pure", "grow_only"],
                      help="sgd: Adam epochs between steps; pure: the talk's Algorithm 1 (best updates, no "
                           "gradient step); grow_only: Algorithm 3 (neurons only)")
    grow.add_argument("--model", default="mlp", choices=["mlp", "cnn"],
                      help="starting network: an MLP chain (--hidden) or a CNN (--channels; mnist1d, digits)")
    grow.add_argument("--hidden", type=int, nargs="*", default=[1], help="widths of the starting chain")
    grow.add_argument("--channels", type=int, nargs="+", default=[2, 2, 2],
                      help="channels of the starting CNN's conv layers (--model cnn)")
    grow.add_argument("--activation", default="relu")
    grow.add_argument("--kinds", nargs="+", default=None, choices=["expand_node", "new_node", "new_edge"],
                      help="where growth may happen (default: expand_node new_node; cnn: expand_node)")
    grow.add_argument("--lr", type=float, default=3e-3)
    grow.add_argument("--weight-decay", type=float, default=0.0, help="> 0: AdamW with this weight decay")
    grow.add_argument("--keep-best", action="store_true",
                      help="after the final epochs, keep the weights of the best validation accuracy")
    grow.add_argument("--batch-size", type=int, default=256)
    grow.add_argument("--final-epochs", type=int, default=0, help="training epochs after the last step")
    grow.add_argument("--max-parameters", type=int, default=None)
    grow.add_argument("--seed", type=int, default=0)
    grow.add_argument("--device", default="cpu")
    grow.add_argument("--out", default="runs/demo", help="run folder")
    grow.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    grow.set_defaults(func=_cmd_grow)

    report = sub.add_parser("report", help="(re)write RUN_DIR/report.html from its history")
    report.add_argument("run_dir")
    report.set_defaults(func=_cmd_report)

    show = sub.add_parser("show", help="print a saved graph's (or run's) summary")
    show.add_argument("path", help="a run folder or a saved graph folder")
    show.set_defaults(func=_cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DaggrowError as err:
        print(f"daggrow: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("daggrow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
