"""The Grower end to end: held-out loss never rises, fit improves, strategies, atomicity."""

from __future__ import annotations

import math

import pytest
import torch

import daggrow as dg
from daggrow.data import load_dataset
from daggrow.data.datasets import TensorLoader
from daggrow.grow import STRATEGIES, Choice, Grower, InformationCriterion, Strategy, evaluate
from daggrow.grow.runner import starting_graph


@pytest.fixture(scope="module")
def small_synthetic():
    d = load_dataset("synthetic", seed=0)
    train = TensorLoader(d.x_train[:3000], d.y_train[:3000], 500, shuffle=True, seed=0)
    val = TensorLoader(d.x_val[:1000], d.y_val[:1000], 1000)
    return d, train, val


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits", seed=0)
    train, val, _ = d.loaders(256, seed=0)
    return d, train, val


def test_growth_steps_never_raise_the_held_out_loss(digits):
    d, train, val = digits
    torch.manual_seed(0)
    grower = Grower(starting_graph(d.num_features, d.num_classes, [1]), loss="cross_entropy", neurons_per_step=2)
    held_out = next(iter(val))
    for _ in range(4):
        before, _ = evaluate(grower.graph, [held_out], "cross_entropy")
        event = grower.grow_step(train, held_out)
        after, _ = evaluate(grower.graph, [held_out], "cross_entropy")
        assert event is not None and after <= before + 1e-6
        assert event.measured_loss_change == pytest.approx(after - before, abs=1e-5)
        assert event.params_after > event.params_before


def test_fit_on_the_synthetic_task_beats_the_start(small_synthetic):
    d, train, val = small_synthetic
    torch.manual_seed(0)
    grower = Grower(starting_graph(d.num_features, d.num_classes, [1]), loss="cross_entropy", neurons_per_step=2,
                    lr=3e-3)
    start_loss, _ = evaluate(grower.graph, train, "cross_entropy")
    history = grower.fit(train, val, growth_steps=6, epochs_between=2)
    end_loss, _ = evaluate(grower.graph, train, "cross_entropy")
    assert end_loss < start_loss - 0.1
    growth = [e for e in history if e.is_growth]
    # the task is hard (fixed MLPs reach ~11% on it, see docs/results.md): growth stops when no
    # change lowers the held-out loss, but the first steps do
    assert len(growth) >= 1 and grower.graph.num_parameters() > history.events[0].params_after


def test_pure_growth_mode_algorithm_1(digits):
    d, train, val = digits
    torch.manual_seed(0)
    grower = Grower(starting_graph(d.num_features, d.num_classes, [1]), loss="cross_entropy", neurons_per_step=1)
    history = grower.fit(train, val, growth_steps=3, mode="pure")
    actions = [e.action for e in history]
    assert actions[0] == "start" and "best_update" in actions
    losses = [e.train_loss for e in history if e.is_growth]
    assert losses == sorted(losses, reverse=True)
    assert grower.optimizer is None  # no gradient step was taken


def _expected_choice(strategy: str, proposals, ctx):
    """The proposal each built-in strategy must pick, computed here from its definition (docs/math.md §9)."""
    shortlist = list(proposals)[:8]  # the amplitude family line-searches the 8 best first-order gains

    def lam1(p):
        return p.eigenvalues[0] if p.eigenvalues else math.sqrt(max(p.bottleneck_decrease, 0.0))

    if strategy == "max_eigenvalue":
        return max(proposals, key=lam1)
    if strategy == "naive":
        places = sorted({p.where for p in proposals})
        return max((p for p in proposals if p.where == places[ctx.step % len(places)]), key=lam1)
    if strategy == "amplitude":
        return max(shortlist, key=lambda p: ctx.search(p).loss_drop)
    if strategy == "efficiency":
        return max(shortlist, key=lambda p: ctx.search(p).loss_drop / max(p.num_new_parameters, 1))
    if strategy == "bottleneck_node":
        worst = max(ctx.bottlenecks, key=ctx.bottlenecks.__getitem__)
        near = [p for p in proposals if worst in p.candidate.touches] or list(proposals)
        return max(near[:8], key=lambda p: ctx.search(p).loss_drop)
    assert strategy == "information_criterion"  # AIC: −Δ(2n·CE) − 2·Δparams, and only if positive
    n = ctx.num_samples

    def gain(p):
        r = ctx.search(p)
        return -(2 * n * (r.loss_after - r.loss_before)) - 2.0 * p.num_new_parameters
    best = max(shortlist, key=gain)
    return best if gain(best) > 0 else None


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_grows(digits, strategy):
    """Each strategy picks the proposal its definition names, and the step applies exactly that
    proposal: its kind and place, its parameters, the held-out loss change its line search measured."""
    d, train, val = digits
    torch.manual_seed(0)
    chosen = InformationCriterion("aic") if strategy == "information_criterion" else strategy
    grower = Grower(starting_graph(d.num_features, d.num_classes, [2, 2]), loss="cross_entropy", strategy=chosen)
    seen = {}
    select = grower.strategy.select

    def spy(proposals, ctx):
        seen["proposals"], seen["ctx"] = list(proposals), ctx
        seen["choice"] = select(proposals, ctx)
        return seen["choice"]

    grower.strategy.select = spy
    held_out = next(iter(val))
    before, _ = evaluate(grower.graph, [held_out], "cross_entropy")
    event = grower.grow_step(train, held_out)
    choice, proposals = seen["choice"], seen["proposals"]
    assert len(proposals) >= 2 and choice is not None
    assert choice.proposal is _expected_choice(strategy, proposals, seen["ctx"])
    assert event is not None and event.is_growth and event.strategy == strategy
    p = choice.proposal
    assert event.action == p.kind and event.where == ([p.candidate.node] if p.kind == "expand_node" else [p.node_name])
    assert event.params_after - event.params_before == p.num_new_parameters > 0
    after, _ = evaluate(grower.graph, [held_out], "cross_entropy")
    assert after - before == pytest.approx(event.measured_loss_change, abs=1e-5)
    assert event.measured_loss_change == pytest.approx(choice.search.loss_after - choice.search.loss_before)
    assert event.measured_loss_change < 0


def test_information_criterion_declines_when_the_penalty_wins(digits):
    """BIC: accept only if 2n·ΔCE > log(n)·Δparams (n = training samples)."""
    d, train, val = digits
    torch.manual_seed(0)
    probe = Grower(starting_graph(d.num_features, d.num_classes, [2]), loss="cross_entropy")
    event = probe.grow_step(train, next(iter(val)))
    n, added, drop = len(d.y_train), event.params_after - event.params_before, -event.measured_loss_change
    torch.manual_seed(0)
    bic = Grower(starting_graph(d.num_features, d.num_classes, [2]), loss="cross_entropy",
                 strategy=InformationCriterion("bic"))
    decision = bic.grow_step(train, next(iter(val)))
    if decision is None:  # declined: then the largest loss drop did not pay for its parameters either
        assert 2 * n * drop <= math.log(n) * added
    else:  # accepted: the chosen change pays for its parameters
        chosen_drop = -decision.measured_loss_change
        chosen_added = decision.params_after - decision.params_before
        assert 2 * n * chosen_drop > math.log(n) * chosen_added


def test_a_user_strategy_object(digits):
    d, train, val = digits

    class NewNodesOnly(Strategy):
        name = "new_nodes_only"

        def select(self, proposals, ctx):
            p = next(p for p in proposals if p.kind == "new_node")
            return Choice(p, ctx.search(p))

    grower = Grower(starting_graph(d.num_features, d.num_classes, [2]), strategy=NewNodesOnly())
    assert grower.grow_step(train, next(iter(val))).action == "new_node"


def test_optimizer_state_is_carried_through_growth(digits):
    d, train, val = digits
    torch.manual_seed(0)
    grower = Grower(starting_graph(d.num_features, d.num_classes, [2]), loss="cross_entropy")
    grower.train_epoch(train)
    name = "edge:x_to_h1.weight"
    old = dict(grower.graph.named_parameters())[name]
    moment = grower.optimizer.state[old]["exp_avg"].clone()
    event = grower.grow_step(train, next(iter(val)))
    assert event is not None
    new = dict(grower.graph.named_parameters())[name]
    carried = grower.optimizer.state[new]["exp_avg"]
    assert torch.equal(carried[: moment.shape[0], : moment.shape[1]], moment)


def test_a_failing_rewrite_changes_nothing(digits, monkeypatch):
    d, train, val = digits
    grower = Grower(starting_graph(d.num_features, d.num_classes, [2]), loss="cross_entropy")
    grower.train_epoch(train)
    spec, events = grower.graph.spec(), list(grower.history.events)
    optimizer = grower.optimizer
    state = {k: {s: v.clone() for s, v in st.items()} for k, st in optimizer.state.items()}

    def broken(*args, **kwargs):
        raise dg.GraphError("simulated failure inside a rewrite")

    monkeypatch.setattr("daggrow.grow.grower._apply", broken)
    with pytest.raises(dg.GraphError, match="simulated"):
        grower.grow_step(train, next(iter(val)))
    assert grower.graph.spec() == spec and grower.history.events == events and grower.optimizer is optimizer
    for p, st in optimizer.state.items():
        assert all(torch.equal(v, state[p][k]) for k, v in st.items())


def test_the_held_out_batch_joins_validation_batches_up_to_a_limit():
    from daggrow.grow.grower import held_out_batch

    x, y = torch.arange(50.0).reshape(25, 2), torch.arange(25)
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 25, 10)]
    hx, hy = held_out_batch(batches, max_samples=15)
    assert torch.equal(hx, x[:15]) and torch.equal(hy, y[:15])
    hx, hy = held_out_batch(batches)
    assert torch.equal(hx, x) and torch.equal(hy, y)
    (a, b), _ = held_out_batch([((x[:5], x[:5] + 1), y[:5])])
    assert torch.equal(b, x[:5] + 1)


def test_evaluate_turns_dropout_off_and_restores_the_modes():
    torch.manual_seed(0)
    g = dg.Graph()
    g.add_input("x", 4)
    g.add_node("h", 50, "relu", dropout=0.5)
    g.add_node("y", 3)
    g.add_edge("x", "h")
    g.add_edge("h", "y")
    g.set_output("y")
    X, Y = torch.randn(200, 4), torch.randint(0, 3, (200,))
    module = g.compile()
    module.eval()
    with torch.no_grad():
        expected = float(torch.nn.functional.cross_entropy(module(X), Y))
    module.train()  # the graph's modules are in training mode again
    loss, accuracy = evaluate(g, [(X[:120], Y[:120]), (X[120:], Y[120:])], "cross_entropy")
    assert loss == pytest.approx(expected, rel=1e-6)
    assert evaluate(g, [(X, Y)], "cross_entropy")[0] == pytest.approx(expected, rel=1e-6)
    assert all(g.module(e).training for e in g.edges)  # the caller's modes are restored


# ------------------------------------------------------------------------------- strict inputs
def _chain(width: int = 3, norm=None) -> dg.Graph:
    g = dg.Graph()
    g.add_input("x", 4)
    g.add_node("h", width, "relu", norm=norm)
    g.add_node("y", 3)
    g.add_edge("x", "h")
    g.add_edge("h", "y")
    g.set_output("y")
    return g


def _batches(n: int = 64, batch: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


@pytest.mark.parametrize("settings, message", [
    (dict(max_width=0), "max_width must be an integer ≥ 1 or None, got 0"),
    (dict(max_width=-1), "max_width must be an integer ≥ 1"),
    (dict(max_nodes=0), "max_nodes must be"),
    (dict(max_fan_in=-3), "max_fan_in must be"),
    (dict(max_parameters=-5), "max_parameters must be an integer ≥ 1 or None, got -5"),
    (dict(neurons_per_step=0), "neurons_per_step must be an integer ≥ 1, got 0"),
    (dict(neurons_per_step=1.5), "neurons_per_step must be an integer"),
    (dict(kinds=["x"]), "kinds must be a non-empty list of 'expand_node', 'new_node', 'new_edge'; got \\['x'\\]"),
    (dict(kinds=[]), "kinds must be a non-empty list"),
    (dict(init="best"), "init must be one of 'tiny'"),
    (dict(loss="hinge"), "loss must be one of 'mse', 'cross_entropy'"),
    (dict(lr=float("nan")), "lr must be a finite number > 0, got nan"),
    (dict(lr=-1e-3), "lr must be a finite number > 0"),
    (dict(amplitude_upper=0), "amplitude_upper must be a finite number > 0"),
    (dict(seed=-1), "seed must be an integer ≥ 0"),
    (dict(new_node_activation="swish9"), "new_node_activation: unknown activation 'swish9'"),
    (dict(optimizer="adam"), "optimizer must be a callable"),
    (dict(strategy="best"), "unknown strategy 'best'"),
])
def test_bad_settings_are_refused_by_the_constructor(settings, message):
    with pytest.raises(dg.DaggrowError, match=message):
        Grower(_chain(), **settings)


def test_the_constructor_needs_a_graph_with_values():
    with pytest.raises(dg.ConfigError, match="needs a daggrow.Graph"):
        Grower(torch.nn.Linear(2, 2))
    g = _chain()
    g._replace_edge_module("x_to_h", torch.nn.Linear(4, 3, device="meta"))
    with pytest.raises(dg.ConfigError, match="meta device"):
        Grower(g)


@pytest.mark.parametrize("arguments, message", [
    (dict(growth_steps=-1), "growth_steps must be an integer ≥ 0, got -1"),
    (dict(epochs_between=-1), "epochs_between must be an integer ≥ 0"),
    (dict(patience=0), "patience must be an integer ≥ 1 or None"),
    (dict(mode="fast"), "mode must be one of 'sgd', 'pure', 'grow_only'"),
])
def test_bad_fit_arguments_are_refused_before_anything_runs(arguments, message):
    grower = Grower(_chain())
    spec = grower.graph.spec()
    with pytest.raises(dg.ConfigError, match=message):
        grower.fit(_batches(), _batches(seed=1), **arguments)
    assert grower.graph.spec() == spec and not grower.history.events and grower.optimizer is None


def test_max_width_bounds_new_nodes_too(digits):
    d, train, val = digits
    torch.manual_seed(0)
    grower = Grower(starting_graph(d.num_features, d.num_classes, [1]), max_width=2, neurons_per_step=4)
    grower.fit(train, val, growth_steps=3, epochs_between=0)
    grown = [e for e in grower.history if e.is_growth]
    assert grown and any(e.action == "new_node" for e in grown)
    hidden = [s.width for n, s in grower.graph.nodes.items() if n not in ("x", "y")]
    assert max(hidden) <= 2  # a ReLU direction is a pair: one direction fits, not four (8 neurons)
    assert all(e.neurons_added <= 2 for e in grown)


@pytest.mark.parametrize("where", ["inputs", "targets"])
def test_non_finite_training_data_is_an_error_before_any_step(where):
    grower = Grower(_chain(), loss="mse")
    batches = _batches()
    x, y = batches[2]
    y = torch.nn.functional.one_hot(y, 3).float()
    if where == "inputs":
        x = x.clone()
        x[3, 1] = float("nan")
    else:
        y[0, 0] = float("inf")
    batches = [(bx, torch.nn.functional.one_hot(by, 3).float()) for bx, by in batches]
    batches[2] = (x, y)
    with pytest.raises(dg.TrainingError, match=f"training batch 2: the {where} contain NaN or infinite values"):
        grower.fit(batches, growth_steps=0)
    assert all(torch.isfinite(p).all() for p in grower.graph.parameters())
    with pytest.raises(dg.TrainingError, match=f"batch 2: the {where}"):
        grower.train_epoch(batches)
    assert all(torch.isfinite(p).all() for p in grower.graph.parameters())


def test_a_diverging_loss_is_an_error_naming_the_learning_rate():
    grower = Grower(_chain(), loss="mse")
    batches = [(x * 1e30, torch.nn.functional.one_hot(y, 3).float()) for x, y in _batches()]
    with pytest.raises(dg.TrainingError, match="batch 0: the loss is NaN or infinite although the data is finite"):
        grower.train_epoch(batches)
    assert all(torch.isfinite(p).all() for p in grower.graph.parameters())


def test_a_one_sample_last_batch_with_batchnorm_is_skipped_with_a_warning():
    torch.manual_seed(0)
    grower = Grower(_chain(norm="batchnorm"))
    batches = _batches(n=33, batch=16)  # 16, 16, 1
    before = [p.detach().clone() for p in grower.graph.parameters()]
    with pytest.warns(RuntimeWarning, match="skipped 1 training batch.*batch normalisation at h needs at least 2"):
        loss = grower.train_epoch(batches)
    assert math.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, grower.graph.parameters()))  # the others trained
    grower.train_epoch(batches)  # warned once per Grower
    grower.fit(batches, growth_steps=1)  # and a whole fit goes through


def test_a_one_shot_generator_is_refused_at_the_first_pass():
    grower = Grower(_chain())
    with pytest.raises(dg.TrainingError, match="training loader is a one-shot iterator.*re-iterable"):
        grower.fit((b for b in _batches()), growth_steps=1)
    with pytest.raises(dg.TrainingError, match="validation loader is a one-shot iterator"):
        grower.fit(_batches(), iter(_batches()), growth_steps=1)
    with pytest.raises(dg.TrainingError, match="one-shot iterator"):
        grower.train_epoch(b for b in _batches())
    with pytest.raises(dg.TrainingError, match="yielded no batch"):
        grower.train_epoch([])
    with pytest.raises(dg.TrainingError, match="must be an iterable of"):
        grower.train_epoch(3)


def test_grow_only_stops_after_three_declined_steps():
    torch.manual_seed(0)
    grower = Grower(_chain(), neurons_per_step=1, max_parameters=40)  # the budget leaves no room at all
    events = []
    history = grower.fit(_batches(), _batches(seed=1), growth_steps=10, mode="grow_only", callback=events.append)
    assert [e.action for e in history] == ["start"] + ["declined"] * 3 and grower._attempts == 3  # then stop
    assert all("max_parameters" in e.note and e.params_after == e.params_before for e in history.events[1:])
    assert events == history.events


def test_patience_stops_when_validation_loss_stalls():
    torch.manual_seed(0)
    grower = Grower(_chain(), kinds=["expand_node"], max_width=3, lr=1e-9)  # nothing can grow or learn
    history = grower.fit(_batches(), _batches(seed=1), growth_steps=10, epochs_between=1, patience=2)
    assert [e.action for e in history] == ["start"] + ["declined", "train"] * 3
    assert all("no place to grow" in e.note for e in history if e.action == "declined")


def test_the_parameter_budget_filters_proposals(digits):
    d, train, val = digits
    torch.manual_seed(0)
    start = starting_graph(d.num_features, d.num_classes, [1])
    budget = start.num_parameters() + 160  # one ReLU pair of a new node x→y costs 2·(64+1+10) = 150
    grower = Grower(start, neurons_per_step=1, max_parameters=budget)
    grower.fit(train, val, growth_steps=3, epochs_between=0)
    assert grower.graph.num_parameters() <= budget
    assert any(e.is_growth for e in grower.history)
    torch.manual_seed(0)
    free = Grower(starting_graph(d.num_features, d.num_classes, [1]), neurons_per_step=1)
    free.fit(train, val, growth_steps=3, epochs_between=0)
    assert free.graph.num_parameters() > budget  # without the budget the same steps grow past it


def test_empty_loaders_are_clear_errors():
    from daggrow.grow.grower import held_out_batch

    g = _chain()
    with pytest.raises(dg.DaggrowError, match="cannot evaluate on an empty loader"):
        evaluate(g, [], "cross_entropy")
    with pytest.raises(dg.DaggrowError, match="the validation loader yielded no batch"):
        held_out_batch([])
    assert evaluate(g, _batches(), "cross_entropy", max_batches=1)[0] == evaluate(g, _batches()[:1], "cross_entropy")[0]


def test_non_finite_validation_data_is_named():
    val = _batches(seed=1)
    val[1] = (val[1][0].clone().fill_(float("nan")), val[1][1])
    with pytest.raises(dg.TrainingError, match="validation batch 1: the inputs contain NaN"):
        Grower(_chain()).fit(_batches(), val, growth_steps=1)


def test_no_candidate_means_no_growth():
    g = dg.Graph()
    g.add_input("x", 4)
    g.add_node("y", 3)
    g.add_edge("x", "y")
    g.set_output("y")
    grower = Grower(g, kinds=["expand_node"])  # no hidden node to widen
    assert grower.grow_step(_batches()) is None
    assert grower.history.events[-1].action == "declined" and "no place to grow" in grower.history.events[-1].note
