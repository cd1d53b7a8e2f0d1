"""The search spaces: which hyperparameters a sweep samples, and in which ranges."""

from __future__ import annotations

# name -> (low, high, log)
SEARCH_SPACES: dict[str, dict[str, tuple[float, float, bool]]] = {
    # the paper's random search (Haim et al., 2022, Appendix)
    "paper": {
        "lr_x": (1e-5, 1.0, True),
        "init_scale": (1e-6, 0.1, True),
        "lambda_min": (0.01, 0.5, False),
        "alpha": (10.0, 500.0, False),
    },
    # a narrower box around the recipe measured to work with Adam on a CPU (Chapter 3)
    "cpu": {
        "lr_x": (1e-3, 0.1, True),
        "init_scale": (1e-4, 1e-2, True),
        "lambda_min": (0.2, 0.5, False),
        "alpha": (30.0, 300.0, False),
    },
    # nothing searched: every trial is the base recipe with its own seed (seed + trial), so
    # pooling trials pools independent runs, chosen without looking at any data
    "seeds": {},
}


SEARCHABLE = ("lr_x", "init_scale", "lambda_min", "alpha", "lr_lambda")


def search_space(name: str = "paper", **overrides) -> dict:
    """The search space as ``{param: optuna.distributions.FloatDistribution}``.

    ``name``: ``"paper"`` (lr_x log-uniform 1e-5..1, init_scale log-uniform 1e-6..0.1,
    lambda_min uniform 0.01..0.5, alpha uniform 10..500), ``"cpu"`` (narrower, around the
    Adam recipe) or ``"seeds"`` (nothing: independent runs of the base recipe).
    ``overrides``: ``param=(low, high, log)`` to change or add a range (any of ``lr_x,
    init_scale, lambda_min, alpha, lr_lambda``), or ``param=None`` to drop one (it then keeps
    the base config's value).
    """
    from optuna.distributions import FloatDistribution

    if name not in SEARCH_SPACES:
        raise ValueError(f"search space must be one of {sorted(SEARCH_SPACES)}, got {name!r}")
    ranges = dict(SEARCH_SPACES[name])
    for k, v in overrides.items():
        if k not in SEARCHABLE:
            raise ValueError(f"cannot search over {k!r}; searchable: {', '.join(SEARCHABLE)}")
        if v is None:
            ranges.pop(k, None)
        else:
            ranges[k] = tuple(v)
    return {k: FloatDistribution(float(lo), float(hi), log=bool(log))
            for k, (lo, hi, log) in ranges.items()}


def space_to_json(space: dict) -> dict:
    return {k: [d.low, d.high, bool(d.log)] for k, d in sorted(space.items())}
