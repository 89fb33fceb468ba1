"""Streaming statistics S, P, M, g (docs/math.md §3) in one pass with hooks and batched GEMMs."""

from .collect import collect_statistics, graph_device, split_batch
from .losses import LOSSES, LossLike, per_sample_loss
from .plan import StatisticsPlan, plan_for, update_sources
from .statistics import Statistics, empty_statistics

__all__ = ["LOSSES", "LossLike", "Statistics", "StatisticsPlan", "collect_statistics", "empty_statistics",
           "graph_device", "per_sample_loss", "plan_for", "split_batch", "update_sources"]
