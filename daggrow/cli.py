"""The ``daggrow`` command: ``grow``, ``report``, ``show``. It only parses and wires things up.

    daggrow grow --out runs/demo              # the default job: digits, ≥ 0.9 test accuracy in seconds
    daggrow grow --dataset synthetic --out runs/talk   # the talk's task
    daggrow grow --resume runs/demo          # go on after a kill or Ctrl-C
    torchrun --nproc_per_node=2 --no-python daggrow grow --out runs/demo2   # across 2 processes
    daggrow report runs/demo
    daggrow show runs/demo

Errors are one line on stderr, like argparse's: ``daggrow grow: error: ...``. A bad option
exits with status 2 before anything is written; an error of daggrow itself (a damaged folder,
bad data) exits with 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError, DaggrowError

EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 2, 1, 130


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``PROG: error: message``), without the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown once: not for flags and unset options, not where the help states its own."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


# ------------------------------------------------------------------------------------- option types
def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be ≥ {minimum}, got {value}")
        return value
    parse.__name__ = f"integer ≥ {minimum}"
    return parse


def _number(*, positive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if positive else '≥'} 0, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def _device(text: str) -> str:
    from .grow.inputs import device

    try:
        device(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _activation(text: str) -> str:
    from .graph import get_activation

    try:
        get_activation(text)
    except DaggrowError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _size(text: str) -> str:
    from .stats.memory import parse_bytes

    try:
        parse_bytes(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


# ------------------------------------------------------------------------------------- commands
def _cmd_grow(args: argparse.Namespace) -> int:
    from .grow.runner import RunConfig, check_out, run_growth

    parser = args.parser
    out = args.resume if args.resume is not None else args.out
    if args.resume is not None:
        changed = sorted(_given_options(parser, args.argv) - {"--resume", "--quiet", "--debug", "--trust", "--threads"})
        if changed:
            parser.error(f"argument --resume: a resumed run keeps its saved configuration ({Path(out) / 'config.json'}); "
                         f"drop {', '.join(changed)}")
        config = RunConfig(out=out)
    elif args.trust:
        parser.error("argument --trust: only with --resume (a new run's graph holds no pickled module)")
    else:
        config = RunConfig(
            dataset=args.dataset, strategy=args.strategy, init=args.init, steps=args.steps,
            neurons_per_step=args.neurons_per_step, epochs_between=args.epochs_between, mode=args.mode,
            model=args.model, hidden=args.hidden, channels=args.channels, activation=args.activation,
            kinds=args.kinds, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
            keep_best=args.keep_best, final_epochs=args.final_epochs, max_parameters=args.max_parameters,
            seed=args.seed, device=args.device, memory_budget=args.memory_budget, out=out,
        )
        try:
            config.check()
        except ConfigError as err:
            parser.error(str(err))
    try:
        check_out(Path(out), resume=args.resume is not None, force=args.force)
    except ConfigError as err:
        parser.error(f"argument {'--resume' if args.resume is not None else '--out'}: {err}")
    _graphviz_or_note(args)
    import torch

    threads_before = torch.get_num_threads()
    threads = args.threads or (None if os.environ.get("OMP_NUM_THREADS") else 1)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        result = run_growth(config, progress=not args.quiet, resume=args.resume is not None, force=args.force,
                            trust=args.trust)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"daggrow grow: interrupted; the run folder keeps its last checkpoint: `daggrow grow --resume {out}` "
              "goes on from there", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside a larger program (tests)
    graph = result.pop("graph")
    if result.get("rank", 0) != 0:  # under torchrun, rank 0 prints
        return 0
    if not args.quiet:
        from .history import History

        print(History.load(result["out"]).summary_table())
        print()
        print(graph.summary())
        print()
    acc = result["test_accuracy"]
    print(f"{result['dataset']}: {result['growth_steps']} growth steps, {result['parameters']:,} parameters, "
          f"test accuracy {'-' if acc is None else f'{acc:.4f}'}, test loss {result['test_loss']:.4f}, "
          f"{result['seconds']:.1f} s" + (" (resumed)" if result.get("resumed") else ""))
    if result.get("best_epoch") is not None:
        print("kept the weights of the final epoch with the best validation accuracy "
              f"(epoch {result['best_epoch']})")
    print(f"run folder: {result['out']}  (report: {Path(result['out']) / 'report.html'})")
    return 0


def _given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The long option strings present on the command line (abbreviations as argparse accepts them)."""
    given = set()
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        for action in parser._actions:
            matches = [s for s in action.option_strings if s == name or (s.startswith(name) and len(name) > 2)]
            if matches:
                given.add(action.option_strings[0])
    return given


def _graphviz_or_note(args: argparse.Namespace) -> bool:
    """Whether Graphviz ``dot`` is installed; when not, one line on stderr says so and how to install it."""
    from .history import drawings

    if drawings.can_render():
        return True
    if not drawings._warned:
        drawings._warned = True  # the library's own warning would say the same again
        print(f"daggrow {args.command}: note: {drawings.MISSING_DOT}", file=sys.stderr)
    return False


def _cmd_report(args: argparse.Namespace) -> int:
    from .atomic import recover
    from .history import History, write_report

    if Path(args.run_dir).parent.is_dir():
        recover(args.run_dir)  # a run folder left between the two renames of a killed save: put it back first
    history = History.load(args.run_dir)
    if _graphviz_or_note(args):
        from .history.drawings import write_step_files

        write_step_files(history.step_drawings(), Path(args.run_dir))  # step_NNN.dot and .svg, as grow writes
    path = write_report(history, args.run_dir)
    print(path)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .atomic import readable
    from .graph import Graph

    path = readable(args.path)
    if (path / "history.json").exists():
        from .history import History

        print(History.load(path).summary_table())
        print()
    unfinished = not (path / "graph.json").exists() and not (readable(path / "graph") / "graph.json").exists() \
        and (readable(path / "checkpoint") / "graph" / "graph.json").exists()
    if unfinished:  # a run that was stopped: its latest checkpoint
        print(f"(the run has not finished: its latest checkpoint; `daggrow grow --resume {args.path}` goes on)")
        _print_graph(Graph.load(readable(path / "checkpoint") / "graph", trust=args.trust))
        return 0
    _print_graph(Graph.load(path, trust=args.trust))  # a graph folder, or a run folder's graph/
    return 0


def _print_graph(graph) -> None:
    """The graph's summary, then each hidden node that cannot gain neurons and why."""
    from .grow import growth_blockers

    print(graph.summary())
    blockers = growth_blockers(graph)
    if blockers:
        print(f"\n{len(blockers)} hidden node(s) cannot gain neurons:")
        for node, reason in blockers.items():
            print(f"  {node}: {reason}")


# ------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="daggrow", description="Grow neural networks where their expressivity bottleneck is.")
    parser.add_argument("--version", action="version", version=f"daggrow {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    grow = sub.add_parser("grow", help="grow a network on a built-in data set",
                          description="Grow a network on a built-in data set into a run folder (--out). A "
                                      "checkpoint is written after every growth step and epoch: after a kill or "
                                      "Ctrl-C, --resume DIR goes on exactly where the run stopped.",
                          formatter_class=_Formatter)
    grow.add_argument("--dataset", default="digits", choices=["digits", "synthetic", "mnist1d"],
                      help="built-in data set (generated or bundled: nothing is downloaded): digits (sklearn's "
                           "8×8 digits), synthetic (the talk's task, hard for small networks), mnist1d (MNIST-1D "
                           "generated locally) (default: digits)")
    grow.add_argument("--strategy", default="amplitude",
                      choices=["amplitude", "naive", "max_eigenvalue", "bottleneck_node", "efficiency",
                               "information_criterion"],
                      help="how each step chooses among the proposals (amplitude: largest held-out loss drop)")
    grow.add_argument("--init", default="tiny", choices=["tiny", "gradmax", "north", "random", "zero"],
                      help="how new neurons are initialised (tiny: the closed-form best neurons)")
    grow.add_argument("--steps", type=_count(0), default=20, help="growth steps")
    grow.add_argument("--directions-per-step", "--neurons-per-step", dest="neurons_per_step", type=_count(1),
                      default=2, metavar="K",
                      help="directions (α, ω) solved and added per growth step; each is one new neuron, or a pair "
                           "of neurons under ReLU-like activations (docs/math.md §8). --neurons-per-step is the "
                           "old name")
    grow.add_argument("--epochs-between", type=_count(0), default=1, help="training epochs after each growth step")
    grow.add_argument("--mode", default="sgd", choices=["sgd", "pure", "grow_only"],
                      help="sgd: Adam epochs between steps; pure: the talk's Algorithm 1 (best updates, no "
                           "gradient step); grow_only: Algorithm 3 (neurons only)")
    grow.add_argument("--model", default="mlp", choices=["mlp", "cnn"],
                      help="starting network: an MLP chain (--hidden) or a CNN (--channels; mnist1d, digits)")
    grow.add_argument("--hidden", type=_count(1), nargs="*", default=[1], help="widths of the starting chain")
    grow.add_argument("--channels", type=_count(1), nargs="+", default=[2, 2, 2],
                      help="channels of the starting CNN's conv layers (--model cnn)")
    grow.add_argument("--activation", type=_activation, default="relu", help="activation of the hidden nodes and of new nodes")
    grow.add_argument("--kinds", nargs="+", default=None, choices=["expand_node", "new_node", "new_edge"],
                      metavar="KIND",
                      help="where growth may happen: expand_node, new_node, new_edge (default: expand_node "
                           "new_node; cnn: expand_node)")
    grow.add_argument("--lr", type=_number(positive=True), default=3e-3, help="learning rate of the optimizer")
    grow.add_argument("--weight-decay", type=_number(positive=False), default=0.0,
                      help="> 0: AdamW with this weight decay")
    grow.add_argument("--keep-best", action="store_true",
                      help="after the final epochs, keep the weights of the best validation accuracy")
    grow.add_argument("--batch-size", type=_count(1), default=256, help="samples per batch")
    grow.add_argument("--final-epochs", type=_count(0), default=0, help="training epochs after the last step")
    grow.add_argument("--max-parameters", type=_count(1), default=None,
                      help="stop growing at this many parameters (default: no limit)")
    grow.add_argument("--seed", type=_count(0), default=0, help="random seed (runs are deterministic given it)")
    grow.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:N or mps")
    grow.add_argument("--memory-budget", type=_size, default=None, metavar="SIZE",
                      help="memory the statistics of a growth step may use, e.g. 4GB or 512MB (default: half "
                           "the memory available); wide sources are then read pooled, or candidates left out")
    grow.add_argument("--threads", type=_count(1), default=None,
                      help="CPU threads of torch (default: $OMP_NUM_THREADS when set, else 1: the small matrices "
                           "of growth gain little from more, and threads that wait for busy cores slow a shared "
                           "machine down several times, docs/timings.md)")
    grow.add_argument("--out", default="runs/demo",
                      help="run folder (must be new or empty, unless --force or --resume)")
    grow.add_argument("--force", action="store_true", help="replace the run folder --out if it holds a run")
    grow.add_argument("--resume", metavar="DIR", default=None,
                      help="continue the run in DIR from its last checkpoint, with its saved configuration")
    grow.add_argument("--trust", action="store_true",
                      help="with --resume: also load modules the checkpoint saved by pickle (user classes); "
                           "unpickling runs code from the folder: only for folders you trust")
    grow.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    grow.set_defaults(func=_cmd_grow)

    report = sub.add_parser("report", help="(re)write RUN_DIR/report.html from its history")
    report.add_argument("run_dir", help="a run folder (written by daggrow grow)")
    report.set_defaults(func=_cmd_report)

    show = sub.add_parser("show", help="print a saved graph's (or run's) summary")
    show.add_argument("path", help="a run folder or a saved graph folder")
    show.add_argument("--trust", action="store_true",
                      help="also load modules saved by pickle (user classes); unpickling runs code from the folder: "
                           "only for folders you trust")
    show.set_defaults(func=_cmd_show)
    for command in (grow, report, show):
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error")
        command.set_defaults(parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    prog = f"daggrow {args.command}"
    try:
        return args.func(args)
    except DaggrowError as err:
        if args.debug:
            raise
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
