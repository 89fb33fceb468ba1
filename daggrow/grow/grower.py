"""The Grower: statistics → proposals → line search → choose → apply → event, and ``fit``.

>>> grower = dg.Grower(g, loss="cross_entropy", strategy="amplitude", init="tiny")   # doctest: +SKIP
>>> event = grower.grow_step(train_loader)                                            # doctest: +SKIP
>>> grower.fit(train_loader, val_loader, growth_steps=20, epochs_between=1)           # doctest: +SKIP

Two modes for ``fit``: ``"sgd"`` trains with an optimizer between growth steps (its state is
carried across every rewrite), ``"pure"`` is the talk's Algorithm 1: no gradient steps, only
growth and best updates δW* of every node, each with its own amplitude.

Default candidate kinds are ``expand_node`` and ``new_node``. ``new_edge`` is available but not
default: once a direct linear edge u→v exists, V⊥_v is orthogonal to B_u, so every later
TINY neuron that reads u (or any other source of v) and writes v has zero first-order value
(docs/math.md §6): an early input→output edge would stall growth between them.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Sequence

import torch

from .. import distributed
from ..errors import ConfigError, DaggrowError, TrainingError
from ..history import GrowthEvent, History
from ..solve import INITS, RankDeficiencyWarning
from ..stats import LossLike, collect_statistics, per_sample_loss, plan_for, split_batch
from ..stats.collect import graph_device
from ..stats.memory import fit_plan, parse_bytes, resolve_budget
from ..stats.losses import LOSSES, loss_name
from . import inputs
from .candidates import KINDS, Kind, enumerate_candidates
from .checkpoint import FitPosition, save_checkpoint
from .line_search import BatchEvaluator, LineSearchResult, golden_section, line_search, line_search_many
from .optim import carry_optimizer, default_optimizer
from .propose import NodeUpdate, Proposal, bottleneck, node_update, propose
from .rewrite import update_weights
from .strategies import SelectionContext, Strategy, get_strategy

if TYPE_CHECKING:
    from ..graph import Graph
    from .checkpoint import Checkpoint


def evaluate(graph: "Graph", loader: Iterable, loss: LossLike, max_batches: int | None = None) -> tuple[float, float | None]:
    """Mean loss and accuracy (for class labels) of ``graph`` over ``loader``, in eval mode."""
    from ..compile import eval_mode

    module = graph.compile()
    device = graph_device(graph)
    total, correct, count, labelled = 0.0, 0, 0, True
    with torch.no_grad(), eval_mode(graph):
        module.eval()  # the compiled module's own dropout layers; eval_mode restores the graph's flags
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            xs, y = split_batch(batch, graph)
            out = module(*(x.to(device) for x in xs))
            y = y.to(device)
            total += float(per_sample_loss(loss, out, y).sum())
            count += y.shape[0]
            if y.dtype in (torch.int64, torch.int32) and out.ndim == 2:
                correct += int((out.argmax(1) == y).sum())
            else:
                labelled = False
    if distributed.active():  # the union of every process's part of the data
        total, correct, count, unlabelled = distributed.sum_over_processes(total, correct, count, not labelled)
        correct, count, labelled = int(correct), int(count), not unlabelled
    if count == 0:
        raise DaggrowError("cannot evaluate on an empty loader")
    return total / count, (correct / count if labelled else None)


HELD_OUT_SAMPLES = 2048


def held_out_batch(val: Iterable, max_samples: int = HELD_OUT_SAMPLES) -> Any:
    """The line search's held-out batch: validation batches joined up to ``max_samples`` samples
    (one small batch makes γ* noisy, and growth then stops on noise). Across processes, each
    takes its share of ``max_samples`` (the line search reduces their losses)."""
    max_samples = distributed.share(max_samples)
    xs, ys, n = [], [], 0
    for batch in val:
        x, y = split_batch(batch)
        xs.append(x), ys.append(y)
        n += y.shape[0]
        if n >= max_samples:
            break
    if not xs:
        raise DaggrowError("the validation loader yielded no batch")
    joined = tuple(torch.cat([x[i] for x in xs])[:max_samples] for i in range(len(xs[0])))
    y = torch.cat(ys)[:max_samples]
    return (joined if len(joined) > 1 else joined[0], y)


class Grower:
    """Grow ``graph`` where its expressivity bottleneck is, keeping a :class:`History`."""

    def __init__(
        self,
        graph: "Graph",
        loss: LossLike = "cross_entropy",
        strategy: str | Strategy = "amplitude",
        init: str = "tiny",
        *,
        kinds: Sequence[Kind] = ("expand_node", "new_node"),
        directions_per_step: int = 1,
        new_node_activation: str = "relu",
        max_width: int | None = None,
        max_nodes: int | None = None,
        max_fan_in: int | None = None,
        max_parameters: int | None = None,
        amplitude_upper: float = 16.0,
        optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
        lr: float = 1e-3,
        seed: int | None = 0,
        progress: bool = False,
        reuse_input_moments: bool = False,
        memory_budget: int | str | None = None,
        neurons_per_step: int | None = None,
    ) -> None:
        from ..graph import Graph, get_activation

        if not isinstance(graph, Graph):
            raise ConfigError(f"Grower needs a daggrow.Graph (dg.trace(model, x) makes one from a model), "
                              f"got {type(graph).__name__}")
        meta = [n for n, p in graph.named_parameters() if p.is_meta]
        if meta:
            raise ConfigError(f"the graph's parameters {meta[:3]} are on the meta device (shapes without values): "
                              "materialise them first, e.g. model.to_empty(device='cpu') and initialise, then trace")
        if not callable(loss):
            inputs.one_of("loss", loss, LOSSES)
        kinds = tuple(kinds)
        if not kinds or any(k not in KINDS for k in kinds):
            raise ConfigError(f"kinds must be a non-empty list of {', '.join(map(repr, KINDS))}; got {list(kinds)}")
        inputs.one_of("init", init, INITS)
        try:
            get_activation(new_node_activation)
        except DaggrowError as err:
            raise ConfigError(f"new_node_activation: {err}") from None
        self.graph = graph
        self.loss = loss
        self.strategy = get_strategy(strategy)
        self.init = init
        self.kinds = kinds
        # directions per step (a ReLU direction is a pair of neurons); neurons_per_step= is its older name
        given = ("neurons_per_step", neurons_per_step) if neurons_per_step is not None else \
            ("directions_per_step", directions_per_step)
        self.directions_per_step = inputs.count(*given, 1)
        self.new_node_activation = new_node_activation
        self.limits = dict(max_width=inputs.count("max_width", max_width, 1, optional=True),
                           max_nodes=inputs.count("max_nodes", max_nodes, 1, optional=True),
                           max_fan_in=inputs.count("max_fan_in", max_fan_in, 1, optional=True))
        self.max_parameters = inputs.count("max_parameters", max_parameters, 1, optional=True)
        self.amplitude_upper = inputs.positive_float("amplitude_upper", amplitude_upper)
        if seed is not None:
            inputs.count("seed", seed, 0)
        if optimizer is not None and not callable(optimizer):
            raise ConfigError(f"optimizer must be a callable params -> torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.seed = seed
        self.progress = progress
        self.generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        self.lr = inputs.positive_float("lr", lr)
        self._make_optimizer = optimizer or (lambda params: default_optimizer(params, lr))
        self._custom = {"loss": callable(loss), "strategy": not isinstance(strategy, str), "optimizer": optimizer is not None}
        self.optimizer: torch.optim.Optimizer | None = None
        self.history: "History" = History()
        self._t0 = time.perf_counter()
        self._last_metrics: dict[str, float | None] = {}
        self._attempts = 0  # grow_step calls so far: a round-robin strategy rotates on these
        # reuse_input_moments: the input covariance (data only) is summed once per loader, not
        # once per step. Valid when the loader yields the same samples every epoch (no random
        # augmentation): that is the caller's promise, so it is off by default.
        self.reuse_input_moments = reuse_input_moments
        self._input_moments: dict[int, object] = {}
        # bytes (or "4GB") the statistics plan may use per step; None: half the memory available then
        self.memory_budget = memory_budget if memory_budget is None else parse_bytes(memory_budget)
        self._resume_from: "Checkpoint | None" = None
        # called with the fit position after each checkpoint (the runner and tests hook in here)
        self.on_checkpoint: Callable[[FitPosition], None] | None = None
        self._warned_small_batch = False

    def settings(self) -> dict[str, Any]:
        """The constructor's arguments as JSON (``None`` for code: a loss function, a strategy
        object, an optimizer factory; :meth:`from_checkpoint` asks for those again)."""
        return {
            "loss": None if self._custom["loss"] else self.loss,
            "strategy": None if self._custom["strategy"] else self.strategy.name,
            "custom": self._custom_settings(),
            "init": self.init, "kinds": list(self.kinds), "directions_per_step": self.directions_per_step,
            "new_node_activation": self.new_node_activation, **self.limits, "max_parameters": self.max_parameters,
            "amplitude_upper": self.amplitude_upper, "lr": self.lr, "seed": self.seed, "progress": self.progress,
            "reuse_input_moments": self.reuse_input_moments, "memory_budget": self.memory_budget,
        }

    def _custom_settings(self) -> dict[str, str]:
        custom = {}
        if self._custom["loss"]:
            custom["loss"] = loss_name(self.loss)
        if self._custom["strategy"]:
            custom["strategy"] = type(self.strategy).__name__
        if self._custom["optimizer"]:
            custom["optimizer"] = getattr(self._make_optimizer, "__name__", type(self._make_optimizer).__name__)
        return custom

    def elapsed(self) -> float:
        """Seconds since the run started (a resumed run counts the time before its checkpoint)."""
        return time.perf_counter() - self._t0

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_checkpoint(cls, path: str | Path, *, loss: LossLike | None = None, strategy: "str | Strategy | None" = None,
                        optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
                        map_location: str | torch.device | None = "cpu", trust: bool = False) -> "Grower":
        """The Grower a checkpoint saved (graph, optimizer state, history, settings), ready for
        :meth:`resume`. Settings that are code are not saved: pass the same ``loss`` function,
        ``strategy`` object or ``optimizer`` factory again (a clear error says which).
        ``trust=True`` also loads the user modules the graph keeps by pickle (a traced model's
        leaf modules): unpickling runs code from the folder, so only for checkpoints you trust."""
        from .checkpoint import grower_from_checkpoint

        return grower_from_checkpoint(cls, path, loss=loss, strategy=strategy, optimizer=optimizer,
                                      map_location=map_location, trust=trust)

    @property
    def checkpoint(self) -> "Checkpoint | None":
        """The checkpoint this Grower was built from (:meth:`from_checkpoint`), else ``None``."""
        return self._resume_from

    # ------------------------------------------------------------------ state
    def swap(self, new: "Graph") -> None:
        """Make ``new`` the current graph, carrying the optimizer state to its parameters."""
        if self.optimizer is not None:
            self.optimizer = carry_optimizer(self.optimizer, self.graph, new)
        self.graph = new

    def ensure_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = self._make_optimizer([p for p in self.graph.parameters() if p.requires_grad])
        return self.optimizer

    # ------------------------------------------------------------------ growth
    def grow_step(self, loader: Iterable, held_out: Any | None = None) -> "GrowthEvent | None":
        """One growth step; returns its event, or ``None`` when nothing worth adding was found (the
        history then holds a ``"declined"`` event whose ``note`` says why).

        ``held_out`` is the batch the amplitude line search minimises on (default: the first
        batch of ``loader``). Across processes, every process takes rank 0's decision and the
        graphs are checked to be the same afterwards (:mod:`daggrow.distributed`).
        """
        event = self._grow_step(loader, held_out)
        if distributed.active():
            distributed.check_same_graph(self.graph, f"growth step {self.graph.step}")
            if event is not None:
                distributed.broadcast_parameters(self.graph)  # as a DDP re-wrap would
        return event

    def _grow_step(self, loader: Iterable, held_out: Any | None) -> "GrowthEvent | None":
        start = time.perf_counter()
        attempt, self._attempts = self._attempts, self._attempts + 1
        graph = self.graph
        if self.max_parameters is not None and graph.num_parameters() >= self.max_parameters:
            return self._decline(f"the parameter budget is reached (max_parameters={self.max_parameters})", start)
        candidates = enumerate_candidates(graph, self.kinds, **self.limits)
        if not candidates:
            return self._decline("no place to grow: the limits (max_width, max_nodes, max_fan_in) leave no candidate",
                                 start)
        # every process plans with the smallest budget, so all of them keep the same candidates
        budget = distributed.min_over_processes(resolve_budget(self.memory_budget, graph_device(graph)))
        plan, candidates, memory = fit_plan(graph, candidates, budget)  # pooled reads or left out: in the note
        if not candidates:
            return self._decline("no candidate fits the memory budget (memory_budget=...): every one was left out",
                                 start)
        reuse = self._input_moments.get(id(loader)) if self.reuse_input_moments else None
        with warnings.catch_warnings(record=True) as caught:
            # singular moments are normal while growing (dead ReLUs, linear dependencies): the
            # solver's pseudo-inverse answer is right; the count goes into the event's note
            # (the pass itself solves δW* at the targets of new channels)
            warnings.simplefilter("always", RankDeficiencyWarning)
            stats = collect_statistics(graph, loader, self.loss, plan=plan, reuse=reuse, memory_budget=budget,
                                       progress=self.progress and distributed.is_main())
            if self.reuse_input_moments and reuse is None:
                self._input_moments[id(loader)] = stats
            # TINY proper first; the unprojected fallback (see propose) only when no candidate
            # has anything in V⊥, e.g. every target already reads every source linearly
            for fallback in (False, True):
                proposals = propose(graph, stats, self.directions_per_step, init=self.init, candidates=candidates,
                                    new_node_activation=self.new_node_activation, generator=self.generator,
                                    unprojected_fallback=fallback)
                if proposals or self.init != "tiny":
                    break
            bottlenecks = bottleneck(graph, stats, updates=proposals.updates)
        singular = sum(issubclass(w.category, RankDeficiencyWarning) for w in caught)
        for w in caught:  # the others (skipped candidates, the user's own) are the user's to see
            if not issubclass(w.category, RankDeficiencyWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        if self.max_parameters is not None:
            room = self.max_parameters - graph.num_parameters()
            proposals = [p for p in proposals if p.num_new_parameters <= room]
        if not proposals:
            return self._decline("no proposal: nothing to gain at any candidate (every λ is 0)"
                                 + ("" if self.max_parameters is None else ", or it would pass max_parameters"), start)
        batch = held_out if held_out is not None else next(iter(loader))
        evaluator = BatchEvaluator(graph, batch, self.loss)
        ctx = SelectionContext(
            graph=graph, step=attempt, bottlenecks=bottlenecks, loss=self.loss,
            num_samples=stats.n,  # the likelihood is over the training set the statistics saw
            run_search=lambda p: line_search(graph, p, batch, self.loss, upper=self.amplitude_upper,
                                             evaluator=evaluator),
            run_many=lambda ps: line_search_many(graph, ps, batch, self.loss, upper=self.amplitude_upper,
                                                 evaluator=evaluator))
        choice = distributed.agree(proposals, self.strategy.select(proposals, ctx))
        if choice is None:
            return self._decline(f"the strategy {self.strategy.name!r} declined all {len(proposals)} proposals", start)
        p, result = choice.proposal, choice.search
        if _silent(p):
            # GradMax/NORTH/zero: a zero fan-in or fan-out leaves the function unchanged at any
            # amplitude, so γ is moot; the neurons are added as solved and training moves them
            result = LineSearchResult(1.0, result.loss_before, result.loss_before, result.evaluations)
        elif result.amplitude == 0.0 or result.loss_drop <= 0:
            # γ* = 0: nothing helps the held-out loss now; zero-amplitude ReLU pairs would be dead
            return self._decline(f"the chosen proposal ({p.kind} {p.where}) does not lower the "
                                 "held-out loss (γ* = 0)", start)
        params_before = graph.num_parameters()
        new = _apply(graph, p, result.amplitude)
        self.swap(new)
        return self._record(action=p.kind, proposal=p, amplitude=result.amplitude,
                            predicted=-result.amplitude * p.first_order_gain,
                            measured=result.loss_after - result.loss_before,
                            params_before=params_before, start=start,
                            note=f"{len(proposals)} proposals, {ctx.evaluations} line-search evaluations, "
                                 f"{singular} singular moment matrices"
                                 + (f"; {memory.summary()}" if memory.summary() else ""))

    def best_update_step(self, loader: Iterable, held_out: Any | None = None) -> list["GrowthEvent"]:
        """Algorithm 1's training part: for every node in order, δW* with its own amplitude η*."""
        events = []
        batch = held_out if held_out is not None else next(iter(loader))
        for node in self.graph.topological_order():
            if node in self.graph.inputs:
                continue
            start = time.perf_counter()
            graph = self.graph
            stats = collect_statistics(graph, loader, self.loss, plan=plan_for(graph, bottleneck_nodes=[node]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RankDeficiencyWarning)
                upd = node_update(graph, stats, node)
            if not upd.edges or upd.first_order_gain <= 0:
                continue
            evaluator = BatchEvaluator(graph, batch, self.loss)

            def loss_at(eta: float) -> float:
                if eta == 0.0:
                    return evaluator.base_loss
                return evaluator.loss(update_weights(graph, _scaled(upd, eta), step=graph.step, record=False), {node})

            eta, after, _ = golden_section(loss_at, self.amplitude_upper)
            if eta == 0.0:
                continue
            params = graph.num_parameters()
            self.swap(update_weights(graph, _scaled(upd, eta), step=graph.step + 1))
            events.append(self._record(action="best_update", where=[node], amplitude=eta,
                                       predicted=-eta * upd.first_order_gain, measured=after - evaluator.base_loss,
                                       params_before=params, start=start))
        distributed.check_same_graph(self.graph, "best updates")
        return events

    # ------------------------------------------------------------------ training
    def train_epoch(self, loader: Iterable) -> float:
        """One epoch of the optimizer over ``loader``; returns the mean training loss.

        A batch whose loss is NaN or infinite raises :class:`TrainingError` before its step (the
        weights stay finite); the message says whether the inputs, the targets or the training
        is at fault. A batch of one sample is skipped, with a warning, when a batch-normalised
        vector node would need the variance of a single value.
        """
        inputs.require_reiterable(loader, "training loader")
        opt = self.ensure_optimizer()
        module = self.graph.compile()
        module.train()
        device = graph_device(self.graph)
        batchnorm = inputs.batch_statistics_nodes(self.graph)
        total, count, skipped = 0.0, 0, 0
        sync = distributed.active()  # gradients averaged over processes, as DDP does
        params = [p for p in self.graph.parameters() if p.requires_grad]
        for index, batch in enumerate(loader):
            xs, y = split_batch(batch, self.graph)
            if batchnorm and y.shape[0] == 1:
                skipped += 1
                if sync:  # the other processes still step: take their average
                    opt.zero_grad(set_to_none=True)
                    distributed.average_gradients(params, 0)
                    opt.step()
                continue
            out = module(*(x.to(device) for x in xs))
            losses = per_sample_loss(self.loss, out, y.to(device))
            batch_total = float(losses.detach().sum())
            finite = math.isfinite(batch_total)
            if not finite and not sync:
                raise inputs.non_finite(index, xs, y)
            opt.zero_grad(set_to_none=True)
            if finite:
                losses.mean().backward()
            if sync and not distributed.average_gradients(params, losses.shape[0], finite):
                if not finite:
                    raise inputs.non_finite(index, xs, y)
                raise TrainingError(f"batch {index}: another process's loss is NaN or infinite (its message says why)")
            opt.step()
            total += batch_total
            count += losses.shape[0]
        if sync:
            total, count = distributed.sum_over_processes(total, count)
            count = int(count)
            distributed.check_same_graph(self.graph, "a training epoch")
        if skipped and not self._warned_small_batch:
            self._warned_small_batch = True
            warnings.warn(f"skipped {skipped} training batch(es) of 1 sample: batch normalisation at "
                          f"{', '.join(batchnorm)} needs at least 2 samples per batch in training mode (use "
                          "drop_last=True or a batch size that leaves no single sample)", RuntimeWarning, stacklevel=2)
        if count == 0 and not skipped:
            raise TrainingError("the training loader yielded no batch")
        return total / max(count, 1)

    def fit(
        self,
        train: Iterable,
        val: Iterable | None = None,
        *,
        growth_steps: int = 10,
        epochs_between: int = 1,
        mode: Literal["sgd", "pure", "grow_only"] = "sgd",
        patience: int | None = None,
        callback: Callable[["GrowthEvent"], None] | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> "History":
        """Alternate growth steps with training (``"sgd"``) or best updates (``"pure"``, the
        talk's Algorithm 1), or only grow (``"grow_only"``, Algorithm 3).

        Stops after ``growth_steps``, when the parameter budget is reached or no proposal is
        found, or when validation loss has not improved for ``patience`` growth steps. The
        amplitude line search minimises on up to 2,048 samples of ``val`` (:func:`held_out_batch`).

        With ``checkpoint_dir``, a checkpoint is written there (atomically) at the start, after
        every growth step and after every epoch; :meth:`from_checkpoint` and :meth:`resume`
        continue from it exactly as if the run had not stopped. Loaders must be re-iterable
        (a list of batches, a DataLoader, :class:`~daggrow.data.TensorLoader`): growth reads
        the data many times.
        """
        position = FitPosition(growth_steps=inputs.count("growth_steps", growth_steps, 0),
                               epochs_between=inputs.count("epochs_between", epochs_between, 0),
                               mode=inputs.one_of("mode", mode, ("sgd", "pure", "grow_only")),
                               patience=inputs.count("patience", patience, 1, optional=True))
        inputs.require_reiterable(train, "training loader")
        if val is not None:
            inputs.require_reiterable(val, "validation loader")
        held_out = held_out_batch(val) if val is not None else None
        self._evaluate(train, val)
        if not self.history.events:
            self._emit(self._record_start(), callback)
        return self._schedule(position, train, val, held_out, callback, checkpoint_dir, start=True)

    def resume(self, train: Iterable, val: Iterable | None = None, *,
               callback: Callable[["GrowthEvent"], None] | None = None,
               checkpoint_dir: str | Path | None = None) -> "History":
        """Continue the :meth:`fit` that wrote the checkpoint this Grower comes from
        (:meth:`from_checkpoint`), with the same arguments, on the same ``train``/``val`` data.

        Random generators (torch, Python, NumPy, the Grower's) and loaders with a
        ``state_dict`` (:class:`~daggrow.data.TensorLoader`) are put back where they were, so
        the run goes on as if it had never stopped: same events, same weights. Checkpoints go
        on into ``checkpoint_dir`` (default: the folder resumed from).
        """
        from .checkpoint import restore_random_state

        ckpt = self._resume_from
        if ckpt is None or ckpt.file.position is None:
            raise DaggrowError("resume() continues a fit from its checkpoint: build the Grower with "
                               "Grower.from_checkpoint(path) from a checkpoint written by fit(..., checkpoint_dir=path)")
        inputs.require_reiterable(train, "training loader")
        if val is not None:
            inputs.require_reiterable(val, "validation loader")
        held_out = held_out_batch(val) if val is not None else None
        restore_random_state(self, ckpt, {"train": train, "val": val})
        self._resume_from = None
        position = ckpt.file.position.model_copy()
        return self._schedule(position, train, val, held_out, callback,
                              ckpt.path if checkpoint_dir is None else checkpoint_dir, start=False)

    def save_checkpoint(self, folder: str | Path, position: FitPosition | None = None, *, train: Any = None,
                        val: Any = None, extra: dict[str, Any] | None = None,
                        graphs: dict[str, "Graph"] | None = None) -> Path:
        """Write a checkpoint of this Grower to ``folder`` (see :mod:`daggrow.grow.checkpoint`)."""
        return save_checkpoint(self, folder, position, loaders={"train": train, "val": val}, extra=extra,
                               graphs=graphs)

    def _schedule(self, pos: FitPosition, train: Iterable, val: Iterable | None, held_out: Any,
                  callback, checkpoint_dir: str | Path | None, *, start: bool) -> "History":
        from .schedule import run_schedule

        return run_schedule(self, pos, train, val, held_out, callback, checkpoint_dir, start=start)

    # ------------------------------------------------------------------ events
    def _evaluate(self, train: Iterable, val: Iterable | None) -> None:
        """Training and validation metrics; a non-finite loss is a :class:`TrainingError` naming the batch."""
        tl, ta = evaluate(self.graph, train, self.loss)
        if not math.isfinite(tl):
            raise inputs.first_non_finite(train, self.graph, "training")
        self._last_metrics = {"train_loss": tl, "train_accuracy": ta, "val_loss": None, "val_accuracy": None}
        if val is not None:
            vl, va = evaluate(self.graph, val, self.loss)
            if not math.isfinite(vl):
                raise inputs.first_non_finite(val, self.graph, "validation")
            self._last_metrics.update(val_loss=vl, val_accuracy=va)

    def _refresh(self, event: "GrowthEvent") -> "GrowthEvent":
        """The event with the metrics measured after it (replaced in the history too)."""
        fresh = event.model_copy(update=self._last_metrics)
        self.history.events[self.history.events.index(event)] = fresh
        return fresh

    def _emit(self, event: "GrowthEvent", callback) -> None:
        if callback is not None:
            callback(event)

    def _record(self, *, action: str, proposal: Proposal | None = None, where: list[str] | None = None,
                amplitude: float | None = None, predicted: float | None = None, measured: float | None = None,
                params_before: int, start: float, note: str = "") -> "GrowthEvent":
        p = proposal
        event = GrowthEvent(
            step=self.graph.step, action=action,
            where=where if where is not None else ([p.candidate.node] if p and p.candidate.node else
                                                   [p.node_name] if p and p.node_name else []),
            sources=list(p.sources) if p else [], targets=list(p.targets) if p else [],
            neurons_added=p.num_neurons if p else 0, directions_added=p.num_directions if p else 0,
            eigenvalues=list(p.eigenvalues) if p else [], amplitude=amplitude,
            predicted_loss_change=predicted, measured_loss_change=measured,
            params_before=params_before, params_after=self.graph.num_parameters(),
            **self._last_metrics,
            wall_time=time.perf_counter() - self._t0, duration=time.perf_counter() - start,
            seed=self.seed, strategy=self.strategy.name, init=self.init, note=note,
            graph=self.graph.spec(),
        )
        self.history.append(event)
        return event

    def _decline(self, reason: str, start: float) -> None:
        """Record a declined growth step (action ``"declined"``, the reason in ``note``); returns ``None``."""
        self.history.append(GrowthEvent(
            step=self.graph.step, action="declined", params_before=self.graph.num_parameters(),
            params_after=self.graph.num_parameters(), **self._last_metrics, wall_time=time.perf_counter() - self._t0,
            duration=time.perf_counter() - start, seed=self.seed, strategy=self.strategy.name, init=self.init,
            note=reason))
        return None

    def _record_start(self) -> "GrowthEvent":
        return self._record(action="start", params_before=self.graph.num_parameters(),
                            start=time.perf_counter(), note=f"loss={loss_name(self.loss)}")

    def _record_train(self) -> "GrowthEvent":
        return self._record(action="train", params_before=self.graph.num_parameters(),
                            start=time.perf_counter())


def _scaled(update: "NodeUpdate", eta: float) -> dict:
    """η·δW* per edge, in the form :func:`~daggrow.grow.rewrite.update_weights` takes."""
    return {e: (eta * dw, None if db is None else eta * db) for e, (dw, db) in update.edges.items()}


def _silent(proposal: Proposal) -> bool:
    """New neurons with an all-zero fan-in or fan-out: invisible to the function at any γ."""
    if proposal.kind == "new_edge":
        return False
    return not bool(torch.count_nonzero(proposal.fan_in)) or not bool(torch.count_nonzero(proposal.fan_out))


def _apply(graph: "Graph", proposal: Proposal, amplitude: float) -> "Graph":
    from .propose import apply

    return apply(graph, proposal, amplitude)
