"""The model-zoo table of issue #10: for each family written in tests/trace/zoo_families.py (plain
PyTorch in the style of DenseNet, MobileNetV2, EfficientNet, Inception, ConvNeXt, ViT, GRU/LSTM
encoders and MLP-Mixer), whether it traces, the largest output difference to the model (eval mode,
a batch of 5), the op nodes (ops kept opaque) and the ops the warning lists, the growth
candidates by kind, and the process CPU time of one ``Grower.grow_step`` (statistics, proposals,
line search) on 64 random samples (random labels of 4 classes), with the loss on 32 other samples
(the step's held-out batch) before and after.

    python benchmarks/bench_zoo.py            # from the repository root
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import daggrow as dg  # noqa: E402
from daggrow.stats import per_sample_loss  # noqa: E402
from tests.trace.zoo_families import FAMILIES  # noqa: E402


def row(name: str) -> dict:
    factory, shape = FAMILIES[name]
    torch.manual_seed(0)
    model = factory().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = dg.trace(model, torch.randn(3, *shape))
    listed = sum(str(w.message).count("\n  - ") for w in caught if issubclass(w.category, dg.OpaqueOpWarning))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, *shape, generator=gen), torch.randint(0, 4, (96,), generator=gen)
    with torch.no_grad():
        diff = float((graph.compile().eval()(x[:5]) - model(x[:5])).abs().max())
    kinds = [c.kind for c in dg.enumerate_candidates(graph)]
    grower = dg.Grower(graph, loss="cross_entropy")
    held = (x[64:], y[64:])

    def loss(g: dg.Graph) -> float:
        with torch.no_grad():
            return float(per_sample_loss("cross_entropy", g.compile().eval()(held[0]), held[1]).mean())

    before = loss(graph)
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        event = grower.grow_step([(x[:32], y[:32]), (x[32:64], y[32:64])], held)
    seconds = time.process_time() - start
    return dict(name=name, nodes=len(graph.nodes), ops=sum(s.op is not None for s in graph.nodes.values()),
                listed=listed, diff=diff, expand=kinds.count("expand_node"), new_node=kinds.count("new_node"),
                new_edge=kinds.count("new_edge"), seconds=seconds, before=before, after=loss(grower.graph),
                grown=f"{event.action} {', '.join(_kind(grower.graph, w) for w in event.where)}" if event else "-",
                blocked=len(dg.growth_blockers(graph)))


def _kind(graph: dg.Graph, name: str) -> str:
    """A grown node or edge named with what it is (a conv node, a linear edge, ...)."""
    if name in graph.nodes:
        spec = graph.node(name)
        return f"{name} ({'tokens' if spec.layout == 'tokens' else 'image' if spec.shape else 'vector'} node)"
    return f"{name} ({graph.edge(name).block.kind})" if name in graph.edges else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(FAMILIES))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times are process CPU seconds")
    print("| model | traces | max |Δ| | nodes | op nodes (warning lines) | candidates expand / new node / new edge "
          "| nodes that cannot widen | one grow step (what grew) | held-out loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.names:
        try:
            r = row(name)
        except dg.TraceError as err:
            print(f"| {name} | no: {str(err).splitlines()[0][:80]} | | | | | | | |")
            continue
        print(f"| {r['name']} | yes | {r['diff']:.1e} | {r['nodes']} | {r['ops']} ({r['listed']}) | "
              f"{r['expand']} / {r['new_node']} / {r['new_edge']} | {r['blocked']} | {r['seconds']:.2f} s ({r['grown']}) | "
              f"{r['before']:.3f} → {r['after']:.3f} |")


if __name__ == "__main__":
    main()
