"""Growth across processes: what :class:`~daggrow.Grower` does under ``torch.distributed``.

When a process group is initialised (``torchrun`` + ``torch.distributed.init_process_group``)
and each process reads its own shard of the data (``DistributedSampler``), every reduction
below makes the run equal to one process reading the union of the shards:

- statistics are sums: they are all-reduced once per pass, in float64 (exact up to the
  order of two additions), the reused input moments excepted (reduced when first collected);
- a training step averages gradients as DDP does: Σ_r n_r·ḡ_r / Σ_r n_r, which is DDP's mean of
  the per-process means when the batches have equal sizes, and the full batch's mean otherwise;
- held-out and validation losses are sums and counts reduced over processes, so every process
  sees the same line-search values, takes the same decision, and draws the same new-neuron
  randomness (the Grower's generator is seeded alike everywhere);
- rank 0's choice of proposal and amplitude is broadcast, and after each step the graphs are
  compared (structure hash + parameter checksum): :class:`DistributedError` if they differ.

Outside a process group (or with one process) every function here is a no-op.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import torch

from .errors import ConfigError, DistributedError

if TYPE_CHECKING:
    from .graph import Graph
    from .grow.strategies import Choice
    from .grow.propose import Proposal
    from .stats.statistics import Statistics


def active() -> bool:
    """A process group of more than one process is initialised."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def is_main() -> bool:
    """This process writes files and prints (rank 0, or no process group)."""
    return rank() == 0


def _device() -> torch.device:
    """Where collectives run: the current CUDA device for NCCL, the CPU otherwise."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_processes(*values: float) -> tuple[float, ...]:
    """Σ over processes of each value (float64); the values themselves outside a process group."""
    if not active():
        return values
    flat = torch.tensor(values, dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(flat)
    return tuple(flat.tolist())


def min_over_processes(value: int) -> int:
    """The smallest ``value`` over processes (``value`` itself outside a process group)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return int(t.item())


def mean_over_processes(total: torch.Tensor | float, count: int) -> float:
    """(Σ_r total_r) / (Σ_r count_r): the mean over the union of the processes' samples."""
    return means_over_processes([float(total)], count)[0]


def means_over_processes(totals: Sequence[float] | torch.Tensor, count: int) -> list[float]:
    """(Σ_r totals_r[i]) / (Σ_r count_r) for each i, in one all-reduce: the mean of each of
    several quantities (e.g. the line search's losses at several amplitudes) over every sample."""
    values = [float(t) for t in totals]
    *sums, n = sum_over_processes(*values, float(count))
    return [t / n if n else math.nan for t in sums]


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def reduce_statistics(stats: "Statistics", exclude: Iterable[tuple[str, Any]] = (),
                      only: str | None = None) -> "Statistics":
    """Sum ``stats`` over processes (in place), leaving the ``(sum name, key)`` blocks of
    ``exclude`` as they are: input moments copied from an already-reduced pass; ``only``: the
    blocks of one sum alone (``Statistics.all_reduce``)."""
    if active():
        stats.all_reduce(exclude=exclude, only=only)
    return stats


def average_gradients(params: Sequence[torch.nn.Parameter], count: int, finite: bool = True) -> bool:
    """Replace each process's mean gradient ḡ_r (over its ``count`` samples) by
    Σ_r n_r·ḡ_r / Σ_r n_r, in one all-reduce. Returns whether every process's loss was finite
    (``finite``: this process's); a process with no sample passes ``count=0``."""
    if not active():
        return finite
    device = _device()
    use = bool(count) and finite
    grads = [p.grad.reshape(-1).to(device, torch.float64) * count if use and p.grad is not None
             else torch.zeros(p.numel(), dtype=torch.float64, device=device) for p in params]
    # per parameter: whether some process has its gradient (None everywhere stays None, as in one process)
    has = [float(use and p.grad is not None) for p in params]
    tail = torch.tensor(has + [float(count) if use else 0.0, float(not finite)], dtype=torch.float64, device=device)
    flat = torch.cat(grads + [tail])
    torch.distributed.all_reduce(flat)
    total, bad = flat[-2].item(), flat[-1].item()
    if bad:
        return False
    has_any = flat[-2 - len(params):-2].tolist()
    offset = 0
    for p, some in zip(params, has_any):
        part = flat[offset: offset + p.numel()]
        offset += p.numel()
        p.grad = (part / total).view_as(p).to(device=p.device, dtype=p.dtype) if some and total else None
    return True


def agree(proposals: Sequence["Proposal"], choice: "Choice | None") -> "Choice | None":
    """Rank 0's choice (which proposal, at which amplitude) on every process."""
    if not active():
        return choice
    from .grow.line_search import LineSearchResult
    from .grow.strategies import Choice

    if choice is None:
        mine = [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    else:
        index = next((i for i, p in enumerate(proposals) if p is choice.proposal), -1)
        r = choice.search
        mine = [float(index), r.amplitude, r.loss_before, r.loss_after, float(r.evaluations), choice.score]
    flat = torch.tensor(mine + [float(len(proposals))], dtype=torch.float64, device=_device())
    counts = [torch.zeros_like(flat) for _ in range(world_size())]
    torch.distributed.all_gather(counts, flat)
    if len({int(c[-1].item()) for c in counts}) > 1:
        raise DistributedError(f"the processes solved different numbers of proposals "
                               f"({[int(c[-1].item()) for c in counts]}): their statistics differ")
    index, amplitude, before, after, evaluations, score = counts[0][:-1].tolist()
    if index < 0:
        return None
    return Choice(proposals[int(index)], LineSearchResult(amplitude, before, after, int(evaluations)), score)


def fingerprint(graph: "Graph") -> tuple[int, float, float]:
    """(hash of the structure, Σ θ, Σ |θ|) of ``graph``: equal graphs give equal fingerprints."""
    digest = hashlib.sha256(graph.spec().model_dump_json().encode()).digest()
    total = absolute = 0.0
    for _, p in sorted(graph.named_parameters(), key=lambda item: item[0]):
        q = p.detach().to(torch.float64)
        total += float(q.sum())
        absolute += float(q.abs().sum())
    return int.from_bytes(digest[:6], "big"), total, absolute


def check_same_graph(graph: "Graph", when: str, rel_tol: float = 1e-6) -> None:
    """Raise :class:`DistributedError` unless every process holds the same graph (same
    structure; parameter checksums equal to ``rel_tol``)."""
    if not active():
        return
    structure, total, absolute = fingerprint(graph)
    mine = torch.tensor([float(structure), total, absolute], dtype=torch.float64, device=_device())
    every = [torch.zeros_like(mine) for _ in range(world_size())]
    torch.distributed.all_gather(every, mine)
    rows = [e.tolist() for e in every]
    if len({r[0] for r in rows}) > 1:
        raise DistributedError(f"after {when}, the processes hold graphs of different structure "
                               f"(hashes {[int(r[0]) for r in rows]}): they took different growth decisions")
    for r in rows:
        for a, b in ((r[1], rows[0][1]), (r[2], rows[0][2])):
            if abs(a - b) > rel_tol * max(rows[0][2], 1.0):
                raise DistributedError(f"after {when}, the processes hold different weights (parameter checksums "
                                       f"{[x[1] for x in rows]}): were the gradients reduced?")


def broadcast_parameters(graph: "Graph") -> None:
    """Rank 0's parameters and buffers on every process (what DDP does when it wraps a model):
    after a rewrite, float-level differences of the solvers on different devices vanish."""
    if not active():
        return
    device = _device()
    for _, t in sorted([*graph.named_parameters(), *_buffers(graph)], key=lambda item: item[0]):
        if not t.is_floating_point():
            continue
        data = t.detach().to(device)
        torch.distributed.broadcast(data, src=0)
        with torch.no_grad():
            t.copy_(data.to(t.device))


def _buffers(graph: "Graph") -> list[tuple[str, torch.Tensor]]:
    """Buffers (batch-norm running statistics) of the graph's modules, named like its parameters."""
    return [(f"{kind}:{name}.{bn}", b) for kind, modules in (("edge", graph._edge_modules), ("norm", graph._norm_modules),
                                                             ("op", graph._op_modules))
            for name, m in modules.items() for bn, b in m.named_buffers()]


def share(max_samples: int) -> int:
    """This process's part of ``max_samples`` samples split over the processes (rounded up)."""
    return -(-max_samples // world_size())


class ShardedLoader:
    """Process ``rank``'s part of each batch of ``loader``: samples ``rank::world_size`` (what
    ``DistributedSampler(shuffle=False)`` gives over the batch's order). Every process thus sees
    the same number of batches, and the union of the parts is the batch of one process. A last
    batch of fewer samples than processes is dropped (no process may be left without a sample).
    ``state_dict``/``load_state_dict`` are the loader's (one epoch counter for all processes)."""

    def __init__(self, loader: Any, rank: int, world_size: int) -> None:
        self.loader, self.rank, self.world_size = loader, rank, world_size

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        for x, y in self.loader:
            if y.shape[0] < self.world_size:
                continue
            part = slice(self.rank, None, self.world_size)
            yield (tuple(t[part] for t in x) if isinstance(x, (tuple, list)) else x[part]), y[part]

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def shard(*loaders: Any) -> tuple[Any, ...]:
    """Each loader as this process's :class:`ShardedLoader` (the loaders themselves outside a
    process group)."""
    if not active():
        return loaders
    return tuple(ShardedLoader(loader, rank(), world_size()) for loader in loaders)


def init_from_environment(device: str = "cpu") -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``…):
    NCCL for a CUDA device, gloo otherwise; each process on its ``LOCAL_RANK``-th GPU. Returns
    whether a group was initialised here (False without torchrun or when one already exists)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"process {local} of this machine has no GPU of its own ({torch.cuda.device_count()} "
                              "visible): start at most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True
