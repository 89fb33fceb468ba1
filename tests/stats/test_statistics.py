"""Statistics as sums: block assembly against brute force in float64, merging, all-reduce, errors."""

from __future__ import annotations

import pytest
import torch

import daggrow as dg
from daggrow.stats.statistics import Statistics, empty_statistics


def _sums(H: dict[str, torch.Tensor], V: dict[str, torch.Tensor]) -> Statistics:
    """The accumulators of per-sample values H[u] (n × d_u) and desired moves V[t] (n × d_t)."""
    widths = {**{u: h.shape[1] for u, h in H.items()}, **{t: v.shape[1] for t, v in V.items()}}
    s = empty_statistics(widths, H, [("u", "w"), ("u", "u"), ("w", "w")], V, [(u, t) for u in H for t in V])
    s.n = next(iter(H.values())).shape[0]
    for u, h in H.items():
        s.h[u] += h.sum(0)
    for u, w in s.hh:
        s.hh[(u, w)] += H[u].T @ H[w]
    for t, v in V.items():
        s.v[t] += v.sum(0)
        s.vv[t] += (v * v).sum()
    for u, t in s.hv:
        s.hv[(u, t)] += H[u].T @ V[t]
    return s


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    H = {"u": torch.randn(50, 3, generator=g, dtype=torch.float64), "w": torch.randn(50, 2, generator=g, dtype=torch.float64)}
    V = {"t": torch.randn(50, 4, generator=g, dtype=torch.float64)}
    return H, V


def _b(h: torch.Tensor) -> torch.Tensor:
    return torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype)], 1)


def test_blocks_equal_brute_force_moments(data):
    H, V = data
    s, n = _sums(H, V), 50
    torch.testing.assert_close(s.moment(["u"], ["u"]), _b(H["u"]).T @ _b(H["u"]) / n)
    torch.testing.assert_close(s.moment(["u"], ["w"]), _b(H["u"]).T @ _b(H["w"]) / n)
    torch.testing.assert_close(s.moment(["w"], ["u"], bias_u=False), H["w"].T @ _b(H["u"]) / n)  # the transposed block
    torch.testing.assert_close(s.moment(["u"], ["w"], bias_w=False), _b(H["u"]).T @ H["w"] / n)
    torch.testing.assert_close(s.grad_moment(["u", "w"], ["t"]), _b(torch.cat([H["u"], H["w"]], 1)).T @ V["t"] / n)
    torch.testing.assert_close(s.grad_moment(["u"], ["t"], bias=False), H["u"].T @ V["t"] / n)
    assert s.grad_energy("t") == pytest.approx(float((V["t"] ** 2).sum()) / n, rel=1e-14)


def test_merging_halves_gives_the_whole(data):
    H, V = data
    first = _sums({k: h[:20] for k, h in H.items()}, {k: v[:20] for k, v in V.items()})
    second = _sums({k: h[20:] for k, h in H.items()}, {k: v[20:] for k, v in V.items()})
    whole, merged = _sums(H, V), first + second
    assert merged.n == 50
    torch.testing.assert_close(merged.moment(["u", "w"], ["u", "w"]), whole.moment(["u", "w"], ["u", "w"]))
    torch.testing.assert_close(merged.grad_moment(["u"], ["t"]), whole.grad_moment(["u"], ["t"]))
    with pytest.raises(dg.StatisticsError, match="different plans or widths"):
        first + _sums({"u": H["u"][:5, :2], "w": H["w"][:5]}, {"t": V["t"][:5]})
    with pytest.raises(TypeError):
        first + 1


def test_all_reduce_sums_every_block_and_the_count(data, monkeypatch):
    """Two identical processes, simulated: the all-reduce doubles the flat buffer."""
    import torch.distributed as dist

    H, V = data
    s, whole = _sums(H, V), _sums(H, V)
    monkeypatch.setattr(dist, "all_reduce", lambda flat, op=None, group=None: flat.mul_(2))
    assert s.all_reduce() is s and s.n == 100
    for name in ("h", "hh", "v", "vv", "hv"):
        for key, t in getattr(whole, name).items():
            torch.testing.assert_close(getattr(s, name)[key], 2 * t)
    torch.testing.assert_close(s.moment(["u"], ["w"]), whole.moment(["u"], ["w"]))  # means are unchanged


def test_missing_blocks_and_empty_sums_are_clear_errors(data):
    H, V = data
    s = _sums(H, V)
    with pytest.raises(dg.StatisticsError, match="the moment between 'w' and 'z' was not collected"):
        s.moment(["w"], ["z"])
    with pytest.raises(dg.StatisticsError, match="the values of node 'z' were not collected"):
        s._value_sum("z")
    with pytest.raises(dg.StatisticsError, match="desired move of 'z' was not collected"):
        s.grad_moment(["u"], ["z"])
    with pytest.raises(dg.StatisticsError, match="the desired move of node 'z' was not collected"):
        s._grad_sum("z")
    with pytest.raises(dg.StatisticsError, match="the desired move of node 'z'"):
        s.grad_energy("z")
    with pytest.raises(dg.StatisticsError, match="new-channel sums of 'k' were not collected"):
        s.full_kernel_moments("k")
    with pytest.raises(dg.StatisticsError, match="no sample was accumulated"):
        Statistics(widths={}).moment([], [])


def test_device_moves_and_repr(data):
    H, V = data
    s = _sums(H, V)
    moved = s.to("cpu")
    assert moved.n == s.n and moved.hh.keys() == s.hh.keys()
    assert all(torch.equal(moved.hh[k], t) for k, t in s.hh.items())
    assert Statistics(widths={})._device() == torch.device("cpu")
    assert repr(s) == "Statistics(n=50, nodes=2, value pairs=3, desired moves=1, gradient pairs=2)"
