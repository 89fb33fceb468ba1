"""The closed-form solver (MATH.md §4–§6): pure functions of statistics, float64 inside.

Nothing here touches modules or graphs; inputs are the moment matrices of MATH §3:
``S = (1/n) B Bᵀ``, ``M = (1/n) B Vᵀ``, ``N = (1/n) B V⊥ᵀ``, ``g = (1/n)‖V‖²``.
"""

from .best_update import BestUpdate, best_update, projected_moment
from .layout import NeuronLayout, activation_layout
from .linalg import RankDeficiencyWarning, sym_pinv_sqrt
from .neurons import (
    INITS,
    NeuronSolution,
    gradmax_neurons,
    north_neurons,
    random_neurons,
    solve_neurons,
    tiny_neurons,
    zero_neurons,
)
from .new_edge import EdgeSolution, new_edge

__all__ = [
    "BestUpdate", "EdgeSolution", "INITS", "NeuronLayout", "NeuronSolution", "RankDeficiencyWarning",
    "activation_layout", "best_update", "gradmax_neurons", "new_edge", "north_neurons", "projected_moment",
    "random_neurons", "solve_neurons", "sym_pinv_sqrt", "tiny_neurons", "zero_neurons",
]
