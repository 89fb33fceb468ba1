"""Real torchvision and timm models (``weights=None``) through daggrow, where those libraries are installed.

daggrow never depends on torchvision or timm (the torchvision wheel on PyPI is built against CUDA torch);
this script only runs on a machine that already has them (e.g. a GPU box). For each model it prints:
whether it traces, the largest output difference between the compiled graph and the model (eval mode, a
batch of 3), the op nodes (ops kept opaque), the growth candidates by kind, and, with ``--grow``, the wall
time of one default ``Grower.grow_step`` on ``--samples`` random images with the held-out loss before and
after (a synthetic labelling, so only "the step does not raise the held-out loss" is meaningful).

    python benchmarks/bench_torchvision.py                       # trace table only
    python benchmarks/bench_torchvision.py --grow --device cuda  # plus one growth step each
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import daggrow as dg  # noqa: E402

TORCHVISION = ["resnet18", "vgg11_bn", "regnet_x_400mf", "densenet121", "shufflenet_v2_x1_0", "squeezenet1_0",
               "googlenet", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16"]
TIMM = ["resnet10t", "mobilenetv3_small_100", "efficientnet_lite0", "regnetx_002", "mixer_s16_224"]


def build(source: str, name: str) -> tuple[torch.nn.Module, int]:
    """The model with random weights and the image side it expects (ViT and Mixer need 224)."""
    if source == "torchvision":
        import torchvision.models as tvm

        kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        model = tvm.get_model(name, weights=None, num_classes=10, **kwargs)
    else:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=10)
    side = 224 if name.startswith(("vit", "mixer")) else 64
    return model.eval(), side


def row(source: str, name: str, device: str, grow: bool, samples: int) -> str:
    torch.manual_seed(0)
    model, side = build(source, name)
    model = model.to(device)
    x = torch.randn(3, 3, side, side, device=device)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = dg.trace(model, x)
    trace_s = time.perf_counter() - start
    listed = sum(str(w.message).count("\n  - ") for w in caught if issubclass(w.category, dg.OpaqueOpWarning))
    compiled = graph.compile(device=device).eval()
    with torch.no_grad():
        diff = float((compiled(x) - model(x)).abs().max())
    kinds = [c.kind for c in dg.enumerate_candidates(graph)]
    ops = sum(s.op is not None for s in graph.nodes.values())
    cells = [f"{source}.{name}", "yes", f"{diff:.1e}", str(len(graph.nodes)), f"{ops} ({listed})",
             f"{kinds.count('expand_node')} / {kinds.count('new_node')} / {kinds.count('new_edge')}", f"{trace_s:.1f} s"]
    if grow:
        gen = torch.Generator().manual_seed(0)
        xs = torch.randn(samples, 3, side, side, generator=gen).to(device)
        ys = torch.randint(0, 10, (samples,), generator=gen).to(device)
        half = samples // 2
        loader = [(xs[i:i + 32], ys[i:i + 32]) for i in range(0, half, 32)]
        held = (xs[half:], ys[half:])
        grower = dg.Grower(graph, loss="cross_entropy")
        before = dg.grow.grower.evaluate(grower.graph, [held], "cross_entropy")[0]
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            event = grower.grow_step(loader, held)
        if device == "cuda":
            torch.cuda.synchronize()
        step_s = time.perf_counter() - start
        after = dg.grow.grower.evaluate(grower.graph, [held], "cross_entropy")[0]
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device == "cuda" else "-"
        cells += [f"{step_s:.1f} s ({event.action if event else '-'})", peak, f"{before:.3f} → {after:.3f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="source.name, e.g. torchvision.resnet18 (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grow", action="store_true", help="also time one default grow_step per model")
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args()
    names = [tuple(n.split(".", 1)) for n in args.names] or \
        [("torchvision", n) for n in TORCHVISION] + [("timm", n) for n in TIMM]
    print(f"torch {torch.__version__}, device {args.device}; wall times")
    head = "| model | traces | max abs Δ | nodes | op nodes (warning lines) | candidates expand / new node / new edge | trace"
    print(head + (" | one grow step | peak GPU memory | held-out loss |" if args.grow else " |"))
    print("|---" * (head.count("|") + (3 if args.grow else 0)) + "|")
    for source, name in names:
        try:
            print(row(source, name, args.device, args.grow, args.samples), flush=True)
        except ImportError as err:
            print(f"| {source}.{name} | not installed: {err} |", flush=True)
        except dg.DaggrowError as err:
            print(f"| {source}.{name} | no: {type(err).__name__}: {str(err).splitlines()[0][:120]} |", flush=True)
        except Exception as err:  # a raw error is a bug worth seeing in full
            print(f"| {source}.{name} | RAW {type(err).__name__}: {str(err).splitlines()[0][:120]} |", flush=True)
            traceback.print_exc(file=sys.stderr)


if __name__ == "__main__":
    main()
