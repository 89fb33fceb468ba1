"""One growth step, daggrow vs the anchor library gromo, side by side (issue target: ≥ 3× faster).

Same MLP 784→w→w→10 (tanh), same weights, same 10k samples (batch 1000), same loss
(cross-entropy summed per sample). One growth step = statistics over the data + solve (best
update and TINY neurons for both hidden layers) + amplitude line search on one batch for each
candidate. Prints seconds (median of --repeats) for both and the λ's both libraries find.

The last two columns time the statistics pass alone in both libraries: a single step cannot be
3× faster than gromo's whole step once daggrow's statistics alone take a third of it.

daggrow runs three ways: with the same statistics as gromo (what the two candidates need:
``bottleneck_nodes=[]``); with Ψ of every node on top (what ``Grower`` collects for its history,
here one extra block M_{x,v_h1}); and inside a growth loop, where the input covariance S_x and
its factorisation (data only) are reused from the previous pass (same statistics as gromo).

    pip install -e ".[bench]"        # installs gromo (only for this benchmark)
    python benchmarks/bench_vs_gromo.py --widths 64 256
"""

from __future__ import annotations

import argparse
import statistics as pystats
import time

import torch
from torch import nn

import daggrow as dg
from daggrow.grow.candidates import enumerate_candidates
from daggrow.grow.line_search import BatchEvaluator, golden_section, line_search_many
from daggrow.grow.propose import apply

# gromo's line search: its factor γ ∈ [0, GROMO_UPPER] scales the new neurons' fan-in and fan-out
# by γ each, i.e. their contribution by γ² (and δW* by γ²). daggrow's amplitude scales the
# contribution itself, so the same interval in daggrow's units is [0, GROMO_UPPER²] (an upper
# bound of 4 for both would start daggrow's search on a quarter of gromo's interval and cost it
# extra bound doublings; daggrow still doubles its bound while the bound wins, gromo does not)
GROMO_UPPER = 4.0
DAGGROW_UPPER = GROMO_UPPER ** 2
CLOCK = time.perf_counter  # --clock cpu: time.process_time


def record(phases: dict | None, **times: float) -> None:
    """Append each phase's time to ``phases[name]`` (when phases are recorded)."""
    if phases is not None:
        for name, t in times.items():
            phases.setdefault(name, []).append(t)


def daggrow_step(g: dg.Graph, batches, held_out, k: int, reuse=None, bottleneck_nodes=(), phases=None):
    t0 = CLOCK()
    cands = enumerate_candidates(g, ["expand_node"])
    stats = dg.collect_statistics(g, batches, "cross_entropy", candidates=cands, reuse=reuse,
                                  bottleneck_nodes=bottleneck_nodes)
    t1 = CLOCK()
    proposals = dg.propose(g, stats, max_neurons=k, candidates=cands, rel_threshold=0.0)
    t2 = CLOCK()
    ev = BatchEvaluator(g, held_out, "cross_entropy")
    results = {"_stats": stats}
    # the shortlist in lockstep, as Grower.grow_step does (each round of both in one pass)
    for p, r in zip(proposals, line_search_many(g, proposals, held_out, "cross_entropy", upper=DAGGROW_UPPER, grid=10,
                                                refine=8, evaluator=ev)):
        results[p.candidate.node] = (p.eigenvalues, r.amplitude, r.loss_after, p, r.evaluations)
    record(phases, statistics=t1 - t0, solve=t2 - t1, search=CLOCK() - t2)
    return results


def loss_of_change(g: dg.Graph, proposal, held_out, amplitude: float, update_amplitude: float) -> float:
    """Held-out cross-entropy after the proposal's neurons at ``amplitude`` and η·δW* at its targets."""
    x, y = held_out
    new = apply(g, proposal, amplitude, update_amplitude=update_amplitude)
    with torch.no_grad():
        return float(nn.functional.cross_entropy(new.compile()(x), y))


def daggrow_statistics(g: dg.Graph, batches) -> None:
    """The statistics pass alone, with the same statistics as gromo."""
    dg.collect_statistics(g, batches, "cross_entropy", candidates=enumerate_candidates(g, ["expand_node"]),
                          bottleneck_nodes=[])


def gromo_statistics(model, batches) -> None:
    from gromo.utils.training_utils import compute_statistics

    compute_statistics(model, batches, loss_function=nn.CrossEntropyLoss(reduction="sum"))
    model.reset_computation()


def gromo_step(model, batches, held_out, k: int, phases=None):
    from gromo.utils.training_utils import compute_statistics

    t0 = CLOCK()
    loss_sum = nn.CrossEntropyLoss(reduction="sum")
    compute_statistics(model, batches, loss_function=loss_sum)
    t1 = CLOCK()
    model.compute_optimal_updates(maximum_added_neurons=k, statistical_threshold=0.0, compute_delta=True)
    model.reset_computation()
    t2 = CLOCK()
    x, y = held_out
    results = {}
    layers = list(model._growing_layers)
    for i, layer in enumerate(layers):
        def loss_at(gamma: float) -> float:
            model.set_scaling_factor(gamma)
            for j, other in enumerate(layers):  # only layer i's extension is active
                if j != i:
                    other.scaling_factor = 0.0
                    other.output_extension_scaling = 0.0
            with torch.no_grad():
                return float(nn.functional.cross_entropy(model.extended_forward(x), y))
        gamma, loss, evaluations = golden_section(loss_at, upper=GROMO_UPPER, grid=10, refine=8)
        lam = layer.eigenvalues_extension
        results[i] = ([float(v) for v in lam] if lam is not None else [], gamma, loss, evaluations)
    record(phases, statistics=t1 - t0, solve=t2 - t1, search=CLOCK() - t2)
    return results


def build(width: int, seed: int):
    from gromo.containers.growing_mlp import GrowingMLP

    torch.manual_seed(seed)
    gm = GrowingMLP(784, 10, width, 2, activation=nn.Tanh())
    g = dg.Graph()
    g.add_input("x", 784)
    g.add_node("h1", width, "tanh")
    g.add_node("h2", width, "tanh")
    g.add_node("y", 10)
    mods = [layer.layer for layer in gm.layers]
    for (u, v), lin in zip([("x", "h1"), ("h1", "h2"), ("h2", "y")], mods):
        copy = nn.Linear(lin.in_features, lin.out_features)
        copy.load_state_dict(lin.state_dict())
        g.add_edge(u, v, module=copy)
    g.set_output("y")
    return g, gm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--neurons", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: time.perf_counter; cpu: this process's CPU time (time.process_time), "
                         "steadier on a shared machine (both libraries run single-threaded here)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.manual_seed(0)
    X = torch.randn(args.samples, 784)
    teacher = nn.Sequential(nn.Linear(784, 32), nn.Tanh(), nn.Linear(32, 10))
    with torch.no_grad():
        Y = teacher(X).argmax(1)
    batches = [(X[i:i + args.batch], Y[i:i + args.batch]) for i in range(0, args.samples, args.batch)]
    held_out = batches[0]
    print(f"threads={torch.get_num_threads()} samples={args.samples} batch={args.batch} neurons={args.neurons} "
          f"torch={torch.__version__} clock={args.clock}")
    print(f"{'width':>6} {'gromo s':>9} {'daggrow s':>10} {'speed-up':>9} {'daggrow +Ψ all s':>17} {'speed-up':>9} "
          f"{'daggrow in loop s':>18} {'speed-up':>9} {'stats only: gromo s':>20} {'daggrow s':>10}")
    for w in args.widths:
        g, gm = build(w, seed=1)
        t_d, t_p, t_g, t_r, s_g, s_d = [], [], [], [], [], []
        ph_d: dict[str, list[float]] = {}
        ph_g: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            t = clock()
            daggrow_statistics(g, batches)
            s_d.append(clock() - t)
            _, gm = build(w, seed=1)
            t = clock()
            gromo_statistics(gm, batches)
            s_g.append(clock() - t)
            t = clock()
            ours = daggrow_step(g, batches, held_out, args.neurons)
            t_d.append(clock() - t)
            t = clock()
            daggrow_step(g, batches, held_out, args.neurons, bottleneck_nodes=None)
            t_p.append(clock() - t)
            t = clock()
            daggrow_step(g, batches, held_out, args.neurons, reuse=ours["_stats"], phases=ph_d)
            t_r.append(clock() - t)
            _, gm = build(w, seed=1)
            t = clock()
            theirs = gromo_step(gm, batches, held_out, args.neurons, phases=ph_g)
            t_g.append(clock() - t)
        d, p, gr, dr, sg, sd = (pystats.median(t) for t in (t_d, t_p, t_g, t_r, s_g, s_d))
        print(f"{w:>6} {gr:>9.3f} {d:>10.3f} {gr / d:>8.2f}× {p:>17.3f} {gr / p:>8.2f}× {dr:>18.3f} {gr / dr:>8.2f}× "
              f"{sg:>20.3f} {sd:>10.3f}")
        parts = lambda ph: " / ".join(f"{k} {pystats.median(v):.3f}" for k, v in ph.items())  # noqa: E731
        print(f"{'':>6}   phases (s, medians): daggrow in loop: {parts(ph_d)} | gromo: {parts(ph_g)}")
        for i, node in enumerate(("h1", "h2")):  # gromo's i-th growing layer widens our h_{i+1}
            lam_g = ", ".join(f"{v:.6g}" for v in theirs[i][0][:3])
            lam_d = ", ".join(f"{v:.6g}" for v in ours[node][0][:3])
            # like with like: gromo's factor γ scales the new neurons' contribution by γ² (fan-in
            # and fan-out each by γ) and also applies γ²·δW*, i.e. daggrow's amplitude γ² with
            # update_amplitude γ²; daggrow's own γ* adds the neurons only (δW* is not applied)
            a = theirs[i][1] ** 2
            same = loss_of_change(g, ours[node][3], held_out, a, a)
            print(f"{'':>6}   {node}: λ gromo [{lam_g}] | daggrow [{lam_d}]")
            print(f"{'':>6}     gromo γ* {theirs[i][1]:.4g} = neurons at amplitude {a:.4g} + {a:.4g}·δW*: loss gromo "
                  f"{theirs[i][2]:.5f} | daggrow, same change {same:.5f};  daggrow γ* {ours[node][1]:.4g} "
                  f"(neurons only): loss {ours[node][2]:.5f};  losses evaluated: gromo {theirs[i][3]}, "
                  f"daggrow {ours[node][4]}")


if __name__ == "__main__":
    main()
