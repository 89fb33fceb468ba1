"""Growth across processes (daggrow.distributed): 2 gloo processes with DistributedSampler and
batch b grow exactly what one process grows with batch 2b over the same data."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import daggrow as dg
from daggrow import distributed
from daggrow.errors import DistributedError

from .graphs import conv_dag, one_hidden

N_TRAIN, N_VAL, BATCH = 64, 64, 8  # per-process batch; one process reads 2 × BATCH


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N_TRAIN + N_VAL, 6, generator=g, dtype=torch.float64)
    y = (x[:, :3] + x[:, 3:]).argmax(1)  # three classes: one hidden neuron is too few
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def _graph(device: str = "cpu") -> dg.Graph:
    g = one_hidden((6, 1, 3), "relu")
    for p in g.parameters():
        p.data = p.data.to(torch.float64)
    g.compile(device=device)
    return g


def _loaders(rank: int, world: int):
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    xt, yt, xv, yv = _data()
    train, val = TensorDataset(xt, yt), TensorDataset(xv, yv)
    if world == 1:
        return DataLoader(train, batch_size=2 * BATCH), DataLoader(val, batch_size=2 * BATCH)
    return tuple(DataLoader(d, batch_size=BATCH, sampler=DistributedSampler(d, world, rank, shuffle=False))
                 for d in (train, val))


def _grow(rank: int, world: int, mode: str, device: str = "cpu") -> dict:
    """A short fit on this process's shard; what the test compares."""
    train, val = _loaders(rank, world)
    grower = dg.Grower(_graph(device), loss="cross_entropy", lr=2e-2, seed=0, reuse_input_moments=True)
    history = grower.fit(train, val, growth_steps=3, epochs_between=1, mode=mode)
    return {"events": [(e.action, e.where, e.params_after) for e in history.events],
            "amplitudes": [e.amplitude for e in history.events],
            "val_loss": [e.val_loss for e in history.events],
            "params": {n: p.detach().cpu().clone() for n, p in grower.graph.named_parameters()}}


def _channel_statistics(rank: int, world: int) -> dict:
    """The statistics of every expansion of a small 2-d CNN (new-channel sums included) over this
    process's part of 24 samples."""
    g = conv_dag(dim=2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(24, 2, 5, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(24, 3, generator=gen, dtype=torch.float64)
    batches = [(x[i: i + 6][rank::world], y[i: i + 6][rank::world]) for i in range(0, 24, 6)]
    stats = dg.collect_statistics(g, batches, "mse")  # new channels, conv nodes and edges: both passes
    return {"n": stats.n, "expansion": stats.expansion, "hh": stats.hh, "hv": stats.hv, "hr": stats.hr,
            "vr": stats.vr}


def _worker(rank: int, world: int, port: int, folder: str, task: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        if task == "different":
            result = {}
            for what in ("structure", "weights"):
                g = _graph()
                if rank == 1 and what == "structure":
                    g.add_node("z", 2, "relu")
                    g.add_edge("x", "z")
                    g.add_edge("z", "y")
                if rank == 1 and what == "weights":
                    with torch.no_grad():
                        g.module("h_to_y").weight.add_(1e-3)
                try:
                    distributed.check_same_graph(g, "a test")
                    result[what] = None
                except DistributedError as err:
                    result[what] = str(err)
        elif task == "channels":
            result = _channel_statistics(rank, world)
        else:
            result = _grow(rank, world, task)
        torch.save(result, Path(folder) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _spawn(tmp_path: Path, task: str, world: int = 2) -> list[dict]:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path), task), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


@pytest.mark.parametrize("mode", ["sgd", "pure"])
def test_two_processes_grow_what_one_process_grows(tmp_path, mode):
    ranks = _spawn(tmp_path, mode)
    single = _grow(0, 1, mode)
    assert sum(a != "start" and a != "train" for a, _, _ in single["events"]) >= 2  # it did grow
    for result in ranks:
        assert result["events"] == single["events"]
        for a, b in zip(result["amplitudes"], single["amplitudes"]):
            assert (a is None) == (b is None) and (a is None or math.isclose(a, b, rel_tol=1e-6))
        for a, b in zip(result["val_loss"], single["val_loss"]):
            assert math.isclose(a, b, rel_tol=1e-9)
        assert result["params"].keys() == single["params"].keys()
        for name, p in single["params"].items():
            torch.testing.assert_close(result["params"][name], p, rtol=1e-7, atol=1e-9)
    for name, p in ranks[0]["params"].items():
        assert torch.equal(ranks[1]["params"][name], p)  # the processes hold the very same graph


def test_new_channel_sums_of_two_processes_equal_one_process(tmp_path):
    """The second pass (new-channel M and N, residual moments: projected with δW* of the reduced
    first pass) is reduced once, alone; the new channels' S, read off the first pass, is not
    reduced again."""
    ranks = _spawn(tmp_path, "channels")
    single = _channel_statistics(0, 1)
    assert any(part == "N" for _, part in single["expansion"]) and single["hr"]
    for result in ranks:
        assert result["n"] == single["n"] == 24
        for name in ("expansion", "hh", "hv", "hr", "vr"):
            assert result[name].keys() == single[name].keys()
            for key, t in single[name].items():
                torch.testing.assert_close(result[name][key], t, rtol=1e-10, atol=1e-12)


def test_different_graphs_raise_a_clear_error(tmp_path):
    for result in _spawn(tmp_path, "different"):
        assert "different structure" in result["structure"]
        assert "different weights" in result["weights"]


# ------------------------------------------------------------------------ the command line
README = Path(__file__).resolve().parents[1] / "README.md"


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun ARGS`` with this interpreter's scripts first on PATH and a free rendezvous port."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "torchrun").exists() or not (bin_dir / "daggrow").exists():
        pytest.skip("torchrun and daggrow are not installed next to this interpreter")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PET_MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _single(config) -> dict:
    from daggrow.grow.runner import run_growth

    return run_growth(config, progress=False)


def test_readme_scale_out_command_runs_as_written(tmp_path):
    from daggrow.grow.runner import RunConfig, load_config

    section = README.read_text().split("## Scale out", 1)[1]
    command = section.split("```bash\n", 1)[1].split("```", 1)[0].strip()
    done = _torchrun(command.split(), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("growth steps,") == 1  # rank 0 prints, the other process does not
    out = tmp_path / "runs" / "digits2"
    config = load_config(out)
    assert config.world_size == 2
    assert (out / "report.html").exists() and not list(tmp_path.glob("runs/*.tmp*"))
    single = _single(RunConfig(**{**config.model_dump(), "world_size": 1, "out": str(tmp_path / "one")}))
    history = dg.History.load(out)
    assert f"{single['parameters']:,} parameters" in done.stdout
    assert [(e.action, e.where, e.params_after) for e in history.events] == \
        [(e.action, e.where, e.params_after) for e in dg.History.load(tmp_path / "one").events]
    assert math.isclose(history.events[-1].val_loss, single["val_loss"], rel_tol=1e-4)


STOP_AFTER_THIRD_CHECKPOINT = """
import sys
from daggrow.grow.runner import RunConfig, run_growth
calls = []
def stop(position):
    calls.append(position)
    if len(calls) == 3:
        raise KeyboardInterrupt  # as a kill would, after a checkpoint
try:
    run_growth(RunConfig(dataset="digits", steps=2, out=sys.argv[1]), progress=False, on_checkpoint=stop)
except KeyboardInterrupt:
    sys.exit(0)
sys.exit(1)
"""


def test_resume_under_torchrun_finishes_the_run_one_process_makes(tmp_path):
    from daggrow.grow.runner import RunConfig

    script = tmp_path / "stop.py"
    script.write_text(STOP_AFTER_THIRD_CHECKPOINT)
    out = tmp_path / "run"
    stopped = _torchrun(["torchrun", "--nproc_per_node=2", str(script), str(out)], tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert len(dg.History.load(out).events) < 5  # stopped part-way
    resumed = _torchrun(["torchrun", "--nproc_per_node=2", "--no-python", "daggrow", "grow", "--resume", str(out),
                         "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("(resumed)") == 1
    single = _single(RunConfig(dataset="digits", steps=2, out=str(tmp_path / "one")))
    events = dg.History.load(out).events
    assert [(e.action, e.where, e.params_after) for e in events] == \
        [(e.action, e.where, e.params_after) for e in dg.History.load(tmp_path / "one").events]
    assert math.isclose(events[-1].val_loss, single["val_loss"], rel_tol=1e-4)


# ------------------------------------------------------------------------ one process, in-process
@pytest.fixture
def group_of_one(tmp_path, monkeypatch):
    """A gloo group of one process, with the reductions switched on (each is then an identity)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    monkeypatch.setattr(distributed, "active", lambda: True)
    yield monkeypatch
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("mode", ["sgd", "pure"])
def test_every_reduction_of_one_process_is_an_identity(group_of_one, mode):
    group_of_one.setattr(distributed, "active", lambda: False)
    plain = _grow(0, 1, mode)
    group_of_one.setattr(distributed, "active", lambda: True)
    reduced = _grow(0, 1, mode)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert reduced["events"] == plain["events"]
    for name, p in plain["params"].items():
        torch.testing.assert_close(reduced["params"][name], p)


def test_a_declined_choice_is_agreed_and_the_counts_are_summed(group_of_one):
    assert distributed.agree([], None) is None
    assert distributed.sum_over_processes(1.5, 2.0) == (1.5, 2.0)
    assert distributed.mean_over_processes(torch.tensor(3.0), 2) == 1.5
    assert math.isnan(distributed.mean_over_processes(0.0, 0))
    distributed.barrier()


def test_a_non_finite_loss_stops_every_process(group_of_one):
    torch.manual_seed(0)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    bad = x.clone()
    bad[0, 0] = math.nan
    grower = dg.Grower(_graph())
    with pytest.raises(dg.TrainingError, match="NaN"):
        grower.train_epoch([(bad, y)])
    group_of_one.setattr(distributed, "average_gradients", lambda *args: False)
    with pytest.raises(dg.TrainingError, match="another process"):
        grower.train_epoch([(x, y)])


def _batchnorm_graph() -> dg.Graph:
    """x (4) → h (3, relu, BatchNorm) → y (3): a graph with buffers besides its parameters."""
    return one_hidden((4, 3, 3), "relu", norm="batchnorm")


def test_a_skipped_batch_still_takes_the_other_processes_step(group_of_one):
    g = _batchnorm_graph()
    before = {n: p.detach().clone() for n, p in g.named_parameters()}
    grower = dg.Grower(g)
    with pytest.warns(RuntimeWarning, match="1 sample"):
        grower.train_epoch([(torch.randn(1, 4), torch.tensor([0]))])
    for n, p in g.named_parameters():  # one process, no sample anywhere: no gradient, no step
        assert torch.equal(p, before[n])
    assert distributed.average_gradients(list(g.parameters()), 3, finite=False) is False


def test_reused_input_moments_are_reduced_once(group_of_one):
    """collect_statistics(reuse=...) leaves the copied input blocks out of the all-reduce."""
    from daggrow.stats import collect_statistics
    from daggrow.stats.statistics import Statistics

    calls = []
    group_of_one.setattr(Statistics, "all_reduce", lambda self, group=None, exclude=(), only=None: calls.append(set(exclude)) or self)

    x, y = _data()[:2]
    g = _graph()
    first = collect_statistics(g, [(x, y)], "cross_entropy")
    collect_statistics(g, [(x, y)], "cross_entropy", reuse=first)
    assert calls[0] == set()
    assert ("hh", ("x", "x")) in calls[1] and ("h", "x") in calls[1]


def test_sharded_loader_gives_each_process_its_part_of_every_batch():
    from daggrow.data import TensorLoader

    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    loader = TensorLoader(x, y, 4)  # batches of 4, 4, 2
    parts = [list(distributed.ShardedLoader(loader, r, 3)) for r in range(3)]
    assert [len(p) for p in parts] == [2, 2, 2]  # the last batch (2 < 3 samples) is dropped everywhere
    assert sorted(torch.cat([b[1] for p in parts for b in p]).tolist()) == list(range(8))
    assert parts[1][0][1].tolist() == [1]
    pairs = distributed.ShardedLoader([((x[:4], x[:4]), y[:4])], 1, 2)
    (a, b), t = next(iter(pairs))
    assert t.tolist() == [1, 3] and torch.equal(a, b)
    sharded = distributed.ShardedLoader(loader, 0, 2)
    assert len(sharded) == 3 and sharded.state_dict() == {"epoch": 3}
    sharded.load_state_dict({"epoch": 1})
    assert loader.epoch == 1


def test_outside_a_process_group_nothing_is_reduced(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_environment() is False
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    loaders = ([1], [2])
    assert distributed.shard(*loaders) == loaders
    assert distributed.share(2048) == 2048
    assert distributed.sum_over_processes(1.0) == (1.0,)
    distributed.barrier()
    g = _graph()
    distributed.check_same_graph(g, "nothing")
    distributed.broadcast_parameters(g)
    assert distributed.average_gradients(list(g.parameters()), 4) is True


def test_out_of_step_processes_are_named_in_the_error(group_of_one):
    """agree and check_same_graph as a second process that differs would see them (all_gather faked)."""
    def gather_with(change):
        def all_gather(out, tensor, *args, **kwargs):
            out[0].copy_(tensor)
            out[1].copy_(change(tensor.clone()))
        return all_gather

    group_of_one.setattr(distributed, "world_size", lambda: 2)

    def more_proposals(t):
        t[-1] += 1
        return t

    group_of_one.setattr(torch.distributed, "all_gather", gather_with(more_proposals))
    with pytest.raises(DistributedError, match=r"different numbers of proposals \(\[0, 1\]\)"):
        distributed.agree([], None)

    def other_structure(t):
        t[0] += 1
        return t

    group_of_one.setattr(torch.distributed, "all_gather", gather_with(other_structure))
    with pytest.raises(DistributedError, match="after step 3, the processes hold graphs of different structure"):
        distributed.check_same_graph(_graph(), "step 3")

    def other_weights(t):
        t[1] += 1.0
        return t

    group_of_one.setattr(torch.distributed, "all_gather", gather_with(other_weights))
    with pytest.raises(DistributedError, match="different weights"):
        distributed.check_same_graph(_graph(), "step 3")


def test_processes_join_the_group_torchrun_describes(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: calls.append(backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(index))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_environment("cpu") is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.init_from_environment("cpu") is True
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(dg.ConfigError, match="one process per GPU"):
        distributed.init_from_environment("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.init_from_environment("cuda") is True
    assert calls == ["gloo", 1, "nccl"]


def test_collectives_run_where_the_backend_needs_them(group_of_one):
    assert distributed._device() == torch.device("cpu")
    group_of_one.setattr(torch.distributed, "get_backend", lambda *args: "nccl")
    group_of_one.setattr(torch.cuda, "current_device", lambda: 0)
    assert distributed._device() == torch.device("cuda", 0)


def test_rank_0_buffers_and_shards_under_a_group(group_of_one):
    g = _batchnorm_graph()
    before = {n: p.detach().clone() for n, p in g.named_parameters()}
    distributed.broadcast_parameters(g)  # running statistics and the integer step counter included
    assert all(torch.equal(p, before[n]) for n, p in g.named_parameters())
    (sharded,) = distributed.shard([1, 2])
    assert isinstance(sharded, distributed.ShardedLoader) and sharded.world_size == 1
    assert distributed.sum_over_processes(2.0) == (2.0,)


def test_a_process_other_than_rank_0_writes_and_prints_nothing(group_of_one, tmp_path, capsys):
    from daggrow.cli import main

    group_of_one.setattr(distributed, "rank", lambda: 1)
    out = tmp_path / "run"
    assert main(["grow", "--dataset", "digits", "--steps", "1", "--out", str(out)]) == 0
    assert not out.exists() or not any(out.iterdir())
    captured = capsys.readouterr()
    assert captured.out == "" and "growing" not in captured.err


# ------------------------------------------------------------------------ NCCL (GPU machines only)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nccl_collectives_on_cuda_grow_what_the_cpu_grows(tmp_path, monkeypatch):
    """The NCCL path (collectives on the process's GPU) in a group of one; with two GPUs or
    more, the 2-process equivalence runs on NCCL in test_two_gpus_grow_what_one_process_grows."""
    cpu = _grow(0, 1, "sgd")
    torch.distributed.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    monkeypatch.setattr(distributed, "active", lambda: True)
    try:
        assert distributed._device().type == "cuda"
        gpu = _grow(0, 1, "sgd", device="cuda")
    finally:
        torch.distributed.destroy_process_group()
    assert gpu["events"] == cpu["events"]
    for name, p in cpu["params"].items():
        torch.testing.assert_close(gpu["params"][name], p, rtol=1e-5, atol=1e-6)


def _nccl_worker(rank: int, world: int, port: int, folder: str) -> None:
    torch.cuda.set_device(rank)
    torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(_grow(rank, world, "sgd", device=f"cuda:{rank}"), Path(folder) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_grow_what_one_process_grows(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_nccl_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _grow(0, 1, "sgd")
    for r in range(2):
        result = torch.load(tmp_path / f"rank{r}.pt")
        assert result["events"] == single["events"]
        for name, p in single["params"].items():
            torch.testing.assert_close(result["params"][name], p, rtol=1e-5, atol=1e-6)
