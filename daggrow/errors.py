"""Exceptions raised by daggrow. Every message says what is wrong, where, and what to do."""

from __future__ import annotations


class DaggrowError(Exception):
    """Base class of every error daggrow raises on purpose."""


class GraphError(DaggrowError):
    """An operation on a :class:`daggrow.Graph` was refused; the graph is unchanged."""


class UnknownNameError(GraphError, KeyError):
    """A node or edge name that the graph does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(GraphError):
    """A node or edge name that is already taken."""


class CycleError(GraphError):
    """The change would create a cycle."""


class WidthMismatchError(GraphError):
    """The widths at the two ends of an edge do not agree."""


class IncompleteGraphError(GraphError):
    """Inputs/outputs are missing, or a node is unreachable from the inputs or unused by the outputs."""


class TraceError(DaggrowError):
    """A model could not be traced into the graph IR; the message names the op and the fix."""


class OpaqueOpWarning(UserWarning):
    """``trace`` kept ops outside the growable vocabulary as op nodes (listed with their lines)."""


class PersistenceError(DaggrowError):
    """A saved graph could not be read: corrupt, truncated, mismatched or of an unknown version."""


class StatisticsError(DaggrowError):
    """Statistics could not be collected (bad data such as NaN, shape mismatch, wrong loss)."""


class SolverError(DaggrowError):
    """A factorisation failed on the active coordinates, with jitter and as an SVD: the moment
    matrix is numerically broken (e.g. huge dynamic range). ``propose`` skips such a candidate."""


class MemoryBudgetWarning(UserWarning):
    """The statistics plan did not fit the memory budget as asked: the listed candidates were read
    through cheaper (pooled) views or left out. ``memory_budget=`` raises the budget."""


class RenderError(DaggrowError):
    """Graphviz rendering failed, usually because the `dot` program is not installed."""


class ConfigError(DaggrowError, ValueError):
    """A setting out of range or of the wrong kind: a negative count, a non-finite learning rate,
    an unknown name, a device that does not exist here. Raised before anything runs."""


class TrainingError(DaggrowError):
    """Training cannot go on: non-finite inputs, targets or loss (the weights would turn NaN),
    or a loader that cannot be read the way growth needs (once per pass, every pass)."""


class CandidateSkippedWarning(UserWarning):
    """``propose`` skipped candidates whose problem could not be solved (a factorisation that
    failed even after its fallbacks, statistics that were not collected): one warning per call
    lists them; the proposals returned carry the reasons (``proposals.skipped``)."""


class DistributedError(DaggrowError):
    """Growth across processes (``torch.distributed``) went out of step: the processes hold
    different graphs or data, or one of them failed."""
