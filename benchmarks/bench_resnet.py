"""ResNet-18 at real size: one default ``Grower.grow_step`` against a plain training epoch.

A CIFAR-style ResNet-18 written here in plain PyTorch (3×3 stem, four stages of two basic
blocks, base width 16 by default or 64, global average pool, linear classifier; no
torchvision), traced with ``dg.trace``; 512 synthetic images 3×32×32 in 10 classes (a fixed
random linear teacher on pooled pixels, so the labels are learnable), batch 128.

Measured in one process, interleaved, ``--repeats`` times, medians:

* ``epoch``: one plain training epoch (Adam, cross-entropy) over the loader;
* ``grow_step``: one default ``Grower.grow_step`` on a fresh copy of the same graph
  (enumerate → memory plan → statistics → propose → line search → apply);
* peak memory above the trained model: CPU, the rise of VmHWM (/proc/self/status) over the RSS
  with the model, data and one epoch done (each measured phase runs in a fresh subprocess so
  its high-water mark is its own); CUDA, ``torch.cuda.max_memory_allocated`` above the memory
  allocated after the epoch.

    python benchmarks/bench_resnet.py                       # width 16, CPU
    python benchmarks/bench_resnet.py --width 64 --repeats 1
    python benchmarks/bench_resnet.py --device cuda --width 64
Times are process CPU time on CPU (``time.process_time``: the machine is shared) and wall
time (synchronised) on CUDA.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics as pystats
import subprocess
import sys
import time
import warnings

import torch
from torch import nn
from torch.nn import functional as F

SAMPLES, SIDE, CLASSES, BATCH = 512, 32, 10, 128


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: stem conv 3×3, stages of widths w, 2w, 4w, 8w (strides 1, 2, 2, 2)."""

    def __init__(self, width: int = 16, classes: int = CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2 ** i
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def data(device: str):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 3, SIDE, SIDE, generator=gen)
    teacher = torch.randn(3 * 16, CLASSES, generator=gen)
    y = (F.adaptive_avg_pool2d(x, 4).flatten(1) @ teacher).argmax(1)
    x, y = x.to(device), y.to(device)
    return [(x[i: i + BATCH], y[i: i + BATCH]) for i in range(0, SAMPLES, BATCH)]


def graph_for(width: int, device: str):
    import daggrow as dg

    torch.manual_seed(0)
    model = ResNet18(width).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = dg.trace(model, torch.randn(2, 3, SIDE, SIDE, device=device))
    g.compile(device=device)
    return g


def vm_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def clock(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def phase(kind: str, width: int, device: str) -> dict:
    """One measured phase in this process: 'epoch' or 'grow' (after one warm-up epoch)."""
    import daggrow as dg
    from daggrow.errors import MemoryBudgetWarning

    loader = data(device)
    grower = dg.Grower(graph_for(width, device), loss="cross_entropy")
    grower.train_epoch(loader)  # the trained model, optimizer state included: the baseline
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = vm_kb("VmRSS") * 1024
    t0 = clock(device)
    note, nodes, caught = "", len(grower.graph.nodes), []
    if kind == "epoch":
        grower.train_epoch(loader)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MemoryBudgetWarning)
            event = grower.grow_step(loader)
        note = event.note if event is not None else "no proposal"
    seconds = clock(device) - t0
    peak = torch.cuda.max_memory_allocated() if cuda else vm_kb("VmHWM") * 1024
    return {"seconds": seconds, "peak_above": max(0, peak - base), "note": note, "nodes": nodes,
            "budget_warnings": sum(issubclass(w.category, MemoryBudgetWarning) for w in caught)}


def run_phase(kind: str, width: int, device: str, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", kind, "--width", str(width), "--device", device,
                          "--threads", str(threads)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"phase {kind} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16, help="base width (16 or 64)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--phase", choices=["epoch", "grow"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.phase:
        print(json.dumps(phase(args.phase, args.width, args.device)))
        return
    runs = {"epoch": [], "grow": []}
    for _ in range(args.repeats):  # interleaved
        for kind in runs:
            runs[kind].append(run_phase(kind, args.width, args.device, args.threads))
    med = {k: pystats.median(r["seconds"] for r in v) for k, v in runs.items()}
    peak = {k: max(r["peak_above"] for r in v) for k, v in runs.items()}
    unit = "wall s" if args.device.startswith("cuda") else "CPU s"
    print(f"ResNet-18 (CIFAR-style, width {args.width}), {SAMPLES} images {SIDE}×{SIDE}, batch {BATCH}, "
          f"{runs['grow'][0]['nodes']} graph nodes, device {args.device}, torch {torch.__version__}, "
          f"{args.threads} threads, {args.repeats} repeats (medians)")
    print(f"{'phase':<12}{unit:>10}{'× epoch':>10}{'peak above model':>20}")
    for k, label in (("epoch", "epoch"), ("grow", "grow_step")):
        print(f"{label:<12}{med[k]:>10.2f}{med[k] / med['epoch']:>10.2f}{peak[k] / 1e9:>17.3f} GB")
    print(f"grow_step note: {runs['grow'][-1]['note']}")
    print(f"MemoryBudgetWarnings: {runs['grow'][-1]['budget_warnings']}")


if __name__ == "__main__":
    main()
