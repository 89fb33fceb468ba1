"""The closed-form solver (docs/math.md §4–§9): pure functions of statistics, float64 inside.

Nothing here touches modules or graphs; inputs are the moment matrices of docs/math.md §3:
``S = (1/n) B Bᵀ``, ``M = (1/n) B Vᵀ``, ``N = (1/n) B V⊥ᵀ``, ``g = (1/n)‖V‖²``, where B (D × n)
stacks the augmented inputs of the fan-in sources (constant row included if the caller wants a
bias) and V (d × n) the desired moves of the targets.

* :func:`best_update` — δW* = Mᵀ S⁺, gain tr(Mᵀ S⁺ M), bottleneck Ψ = g − gain (§4).
* :func:`projected_moment` — N = M_{U,T} − P_{U,in} δW*ᵀ, one target block at a time (§5).
* :func:`whitening` — a factor F with F S Fᵀ = I and Fᵀ F = S⁺ (Cholesky when S is well
  conditioned, the spectral cut otherwise); it stands for S^{-1/2} below.
* :func:`tiny_neurons` and :func:`solve_neurons` — new neurons from the SVD of S^{-1/2} N (§5).
* :func:`new_edge` — least-squares weight of a direct edge, W = Nᵀ S⁺ (§5).
* :func:`activation_layout` — one neuron or a (+, −) pair per direction, exact to first order.
"""

from .best_update import BestUpdate, best_update, bottleneck_value, projected_moment
from .layout import NeuronLayout, activation_layout
from .linalg import (
    Decomposition,
    RankDeficiencyWarning,
    SolverInputError,
    Whitening,
    active_coordinates,
    psd_eigh,
    stable_eigh,
    stable_svd,
    sym_pinv_sqrt,
    whitening,
)
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
    "Decomposition",
    "BestUpdate", "EdgeSolution", "INITS", "NeuronLayout", "NeuronSolution", "RankDeficiencyWarning",
    "SolverInputError", "activation_layout", "best_update", "bottleneck_value", "gradmax_neurons", "new_edge",
    "north_neurons", "projected_moment", "psd_eigh", "active_coordinates", "stable_eigh", "stable_svd", "random_neurons", "solve_neurons", "sym_pinv_sqrt",
    "tiny_neurons", "whitening", "Whitening", "zero_neurons",
]
