"""Weight initializers: a registry ``name -> fn(shape, rng, **options) -> float64 array``.

For a Dense weight of shape ``(fan_in, fan_out)``:

========================  ===========================================  =====================
name                      distribution                                 variance
========================  ===========================================  =====================
``xavier_uniform``        U(-a, a), a = sqrt(6 / (fan_in + fan_out))   2 / (fan_in + fan_out)
``xavier_normal``         N(0, 2 / (fan_in + fan_out))                 2 / (fan_in + fan_out)
``he_uniform``            U(-a, a), a = sqrt(6 / fan_in)               2 / fan_in
``he_normal``             N(0, 2 / fan_in)                             2 / fan_in
``lecun_normal``          N(0, 1 / fan_in)                             1 / fan_in
``normal``                N(0, std²)                                   std²
``uniform``               U(-limit, limit)                             limit² / 3
``zeros``                 0                                            0
========================  ===========================================  =====================
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Initializer = Callable[..., np.ndarray]


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"initializers expect a 2-D (fan_in, fan_out) shape, got {shape}")
    return int(shape[0]), int(shape[1])


def xavier_uniform(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    fan_in, fan_out = _fans(shape)
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape)


def xavier_normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    fan_in, fan_out = _fans(shape)
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def he_uniform(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    fan_in, _ = _fans(shape)
    a = np.sqrt(6.0 / fan_in)
    return rng.uniform(-a, a, size=shape)


def he_normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    fan_in, _ = _fans(shape)
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)


def lecun_normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    fan_in, _ = _fans(shape)
    return rng.normal(0.0, np.sqrt(1.0 / fan_in), size=shape)


def normal(shape: tuple[int, ...], rng: np.random.Generator, std: float | None = None) -> np.ndarray:
    if std is None or not std > 0:
        raise ValueError(f"init 'normal' needs a positive std (model.init_std), got {std}")
    return rng.normal(0.0, std, size=shape)


def uniform(shape: tuple[int, ...], rng: np.random.Generator, limit: float | None = None) -> np.ndarray:
    if limit is None or not limit > 0:
        raise ValueError(f"init 'uniform' needs a positive limit (model.init_limit), got {limit}")
    return rng.uniform(-limit, limit, size=shape)


def zeros(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return np.zeros(shape)


INITIALIZERS: dict[str, Initializer] = {
    "xavier_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "lecun_normal": lecun_normal,
    "normal": normal,
    "uniform": uniform,
    "zeros": zeros,
}


def get_initializer(name: str) -> Initializer:
    """The initializer registered as ``name`` (ValueError listing the valid names otherwise)."""
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown init {name!r}; use one of {', '.join(INITIALIZERS)}") from None


def expected_variance(name: str, fan_in: int, fan_out: int, std: float | None = None,
                      limit: float | None = None) -> float:
    """The variance each initializer targets (the table above), for tests and reports."""
    table = {
        "xavier_uniform": 2.0 / (fan_in + fan_out), "xavier_normal": 2.0 / (fan_in + fan_out),
        "he_uniform": 2.0 / fan_in, "he_normal": 2.0 / fan_in, "lecun_normal": 1.0 / fan_in,
        "normal": (std or 0.0) ** 2, "uniform": (limit or 0.0) ** 2 / 3.0, "zeros": 0.0,
    }
    get_initializer(name)
    return table[name]
