"""The schedule of :meth:`Grower.fit`: growth steps, training between them, stops, checkpoints.

Its state is a :class:`~daggrow.grow.checkpoint.FitPosition` (step, phase, epochs done, the
patience and decline counters), moved along as the loop goes and saved in every checkpoint, so
that :meth:`Grower.resume` enters the same loop where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .checkpoint import FitPosition

if TYPE_CHECKING:
    from ..history import GrowthEvent, History
    from .grower import Grower


def run_schedule(grower: "Grower", pos: FitPosition, train: Iterable, val: Iterable | None, held_out: Any,
                 callback: Callable[["GrowthEvent"], None] | None, checkpoint_dir: str | Path | None, *,
                 start: bool) -> "History":
    """:meth:`Grower.fit`'s loop from ``pos`` on, with a checkpoint after each growth step and epoch
    (and at the start when ``start``); ``pos`` moves along, so that a checkpoint says where to go on."""
    def checkpoint() -> None:
        if checkpoint_dir is not None:
            grower.save_checkpoint(checkpoint_dir, pos, train=train, val=val)
            if grower.on_checkpoint is not None:
                grower.on_checkpoint(pos)

    if start:
        checkpoint()
    while not pos.finished:
        if pos.phase == "grow":
            event = grower.grow_step(train, held_out)
            if event is not None and event.is_growth:
                pos.declined = 0
                grower._evaluate(train, val)
                grower._emit(grower._refresh(event), callback)
            else:
                if grower.history.events and grower.history.events[-1].action == "declined":
                    grower._emit(grower.history.events[-1], callback)  # a declined step, recorded with its reason
                if pos.mode != "sgd" or pos.epochs_between == 0:
                    pos.declined += 1  # nothing helped here; a round-robin strategy moves on
                    if pos.declined >= 3:
                        pos.phase = "done"  # nothing to add, and nothing else would change the network
                        checkpoint()
                        break
            pos.phase, pos.epochs_done = "train", 0
            if pos.mode == "grow_only":
                pos.step, pos.phase = pos.step + 1, "grow"
            checkpoint()
            continue
        if pos.mode == "pure":
            for e in grower.best_update_step(train, held_out):
                grower._emit(e, callback)
        else:
            while pos.epochs_done < pos.epochs_between:
                grower.train_epoch(train)
                pos.epochs_done += 1
                if pos.epochs_done < pos.epochs_between:
                    checkpoint()
            grower._evaluate(train, val)
            grower._emit(grower._record_train(), callback)
        pos.step, pos.phase, pos.epochs_done = pos.step + 1, "grow", 0
        current = grower._last_metrics.get("val_loss")
        if pos.patience is not None and current is not None:
            if pos.best_val is None or current < pos.best_val - 1e-9:
                pos.best_val, pos.stale = current, 0
            else:
                pos.stale += 1
                if pos.stale >= pos.patience:
                    pos.phase = "done"
        checkpoint()
    return grower.history
