"""What the default growth candidates cost on a CIFAR-size ResNet (16-32-64 channels, 32×32
inputs, 128 samples): process CPU seconds of the statistics pass and of ``propose`` for
``expand_node`` alone and for ``expand_node`` + ``new_node`` (conv branches between image nodes
one or two layers apart, linear nodes into the head), planned as ``Grower`` plans them
(``daggrow.stats.memory.fit_plan``), and the peak resident memory.

    python benchmarks/bench_cnn_candidates.py expand_node
    python benchmarks/bench_cnn_candidates.py expand_node new_node
"""

from __future__ import annotations

import resource
import sys
import time
import warnings

import torch
from torch import nn

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])

import daggrow as dg  # noqa: E402
from daggrow.stats.memory import fit_plan, resolve_budget  # noqa: E402


class Block(nn.Module):
    def __init__(self, c_in: int, c: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.sc = nn.Conv2d(c_in, c, 1, stride, bias=False) if stride != 1 or c_in != c else None

    def forward(self, x):
        h = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(h + (x if self.sc is None else self.sc(x)))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.blocks = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = self.blocks(torch.relu(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def main() -> None:
    kinds = sys.argv[1:] or ["expand_node", "new_node"]
    torch.manual_seed(0)
    graph = dg.trace(ResNet().eval(), torch.randn(3, 3, 32, 32))
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    candidates = dg.enumerate_candidates(graph, kinds)
    start = time.process_time()
    # as Grower does: wide flattened sources read pooled, what no view fits left out
    plan, candidates, _ = fit_plan(graph, candidates, resolve_budget(None, torch.device("cpu")), warn=False)
    stats = dg.collect_statistics(graph, [(x[:64], y[:64]), (x[64:], y[64:])], "cross_entropy", plan=plan)
    middle = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg.propose(graph, stats, candidates=candidates)
    end = time.process_time()
    conv = sum(c.block is not None for c in candidates)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"kinds {kinds}: {len(candidates)} candidates ({conv} conv pairs); statistics {middle - start:.2f} s, "
          f"propose {end - middle:.2f} s (process CPU); peak memory {peak:.2f} GB")


if __name__ == "__main__":
    main()
