"""The closed-form solver (MATH.md §4–§6): pure functions of statistics, float64 inside.

Nothing here touches modules or graphs; inputs are the moment matrices of MATH §3:
``S = (1/n) B Bᵀ``, ``M = (1/n) B Vᵀ``, ``N = (1/n) B V⊥ᵀ``, ``g = (1/n)‖V‖²``.
"""
