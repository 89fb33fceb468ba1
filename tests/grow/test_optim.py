"""The optimizer continues across a rewrite: old moments bit-identical, new entries zero."""

from __future__ import annotations

import torch

from daggrow.grow import rewrite
from daggrow.grow.optim import carry_optimizer

from ..graphs import one_hidden


def trained_graph():
    g = one_hidden((4, 3, 2), "tanh")
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    m = g.compile()
    for _ in range(3):
        loss = m(torch.randn(8, 4)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return g, opt


def test_adam_moments_of_old_weights_are_bit_identical_after_growth():
    g, opt = trained_graph()
    old = {name: {k: v.clone() for k, v in opt.state[p].items()} for name, p in g.named_parameters()}
    new = rewrite.add_neurons(g, "h", {"x_to_h": torch.randn(2, 4)}, {"h_to_y": torch.randn(2, 2)},
                              bias={"x_to_h": torch.randn(2)}, step=1)
    new = rewrite.new_edge(new, "x", "y", torch.zeros(2, 4), torch.zeros(2), step=2)
    carried = carry_optimizer(opt, g, new)
    params = dict(new.named_parameters())
    assert {id(p) for group in carried.param_groups for p in group["params"]} == {id(p) for p in params.values()}
    for name, state in old.items():
        s = carried.state[params[name]]
        assert torch.equal(s["step"], state["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            block = s[key][tuple(slice(0, n) for n in state[key].shape)]
            assert torch.equal(block, state[key])  # bit-identical
            rest = s[key].clone()
            rest[tuple(slice(0, n) for n in state[key].shape)] = 0
            assert torch.count_nonzero(rest) == 0  # new rows/columns start at zero
    assert params["edge:x_to_y.weight"] not in carried.state  # a new edge starts fresh
    assert carried.defaults["lr"] == opt.defaults["lr"]
    # and it keeps working
    m = new.compile()
    carried.zero_grad()
    m(torch.randn(8, 4)).pow(2).sum().backward()
    carried.step()


def test_sgd_momentum_is_carried():
    g, _ = trained_graph()
    opt = torch.optim.SGD(g.parameters(), lr=0.1, momentum=0.9)
    g.compile()(torch.randn(8, 4)).sum().backward()
    opt.step()
    buf = opt.state[g.module("h_to_y").weight]["momentum_buffer"].clone()
    new = rewrite.add_neurons(g, "h", {"x_to_h": torch.zeros(1, 4)}, {"h_to_y": torch.zeros(2, 1)}, step=1)
    carried = carry_optimizer(opt, g, new)
    assert torch.equal(carried.state[new.module("h_to_y").weight]["momentum_buffer"][:, :3], buf)


def test_adamw_and_other_optimizers_are_carried_with_their_hyper_parameters():
    g, _ = trained_graph()
    for make in (lambda ps: torch.optim.AdamW(ps, lr=3e-3, weight_decay=0.1),
                 lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.5),
                 lambda ps: torch.optim.Adagrad(ps, lr=0.1)):
        opt = make(g.parameters())
        g.compile()(torch.randn(8, 4)).pow(2).sum().backward()
        opt.step()
        new = rewrite.add_neurons(g, "h", {"x_to_h": torch.zeros(1, 4)}, {"h_to_y": torch.zeros(2, 1)}, step=1)
        carried = carry_optimizer(opt, g, new)
        assert type(carried) is type(opt)
        assert {k: v for k, v in carried.param_groups[0].items() if k != "params"} == \
            {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        weight = new.module("x_to_h").weight
        for key, value in opt.state[g.module("x_to_h").weight].items():
            if value.ndim:
                assert torch.equal(carried.state[weight][key][:3], value)
        carried.step()
        for p in g.parameters():
            p.grad = None


def test_default_optimizer_is_fused_or_foreach_and_steps_like_plain_adam():
    from daggrow.grow.optim import default_optimizer

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(4))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fast, plain = default_optimizer(a, 1e-2), torch.optim.Adam(b, lr=1e-2, foreach=False)
    assert fast.defaults.get("fused") or fast.defaults.get("foreach")
    for _ in range(3):
        for ps, opt in ((a, fast), (b, plain)):
            opt.zero_grad()
            sum((p ** 2).sum() for p in ps).backward()
            opt.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_default_optimizer_falls_back_to_foreach_where_fused_is_refused(monkeypatch):
    from daggrow.grow.optim import default_optimizer

    real = torch.optim.Adam

    def no_fused(params, **kw):
        if kw.get("fused"):
            raise RuntimeError("fused Adam is not supported here")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    opt = default_optimizer([torch.nn.Parameter(torch.randn(2))], 1e-3)
    assert opt.defaults["foreach"] and not opt.defaults.get("fused")
