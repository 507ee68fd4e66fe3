"""Compact per-layer series with bounded memory.

A :class:`History` keeps one row per recorded step: model-wide scalars (``loss``, ``grad_norm``,
``clip_coef``, ``lr``) and per-layer quantities (``grad_norm``, ``weight_norm``, ``update_ratio``,
``saturation``, ``dead_fraction``, ``act_mean``, ``act_std``) for each monitored layer.  Memory is bounded
by ``capacity`` rows: when the buffers fill up, every other row is dropped and only every second record is
kept from then on (the stride doubles), so a run of any length is summarised at evenly spaced steps.

Rows are float64; a value that does not apply (saturation of a ReLU layer, say) is NaN.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

SCALARS: tuple[str, ...] = ("loss", "grad_norm", "clip_coef", "lr")
LAYER_QUANTITIES: tuple[str, ...] = (
    "grad_norm", "weight_norm", "update_ratio", "saturation", "dead_fraction", "act_mean", "act_std",
)


class History:
    """Bounded buffers of per-step scalars and per-layer quantities.

    Shapes: ``steps`` is ``(n,)``; ``scalar(name)`` is ``(n,)``; ``layer(name)`` is ``(n, n_layers)``,
    column ``j`` belonging to ``layer_names[j]``.
    """

    def __init__(self, layer_names: Iterable[str], capacity: int = 2048) -> None:
        if capacity < 4 or capacity % 2:
            raise ValueError(f"capacity must be an even number >= 4, got {capacity}")
        self.layer_names = list(layer_names)
        self.capacity = int(capacity)
        self.stride = 1
        self._seen = 0
        self._n = 0
        self._steps = np.zeros(capacity, dtype=np.int64)
        self._scalars = {k: np.full(capacity, np.nan) for k in SCALARS}
        self._layers = {k: np.full((capacity, len(self.layer_names)), np.nan) for k in LAYER_QUANTITIES}

    def __len__(self) -> int:
        return self._n

    @property
    def steps(self) -> np.ndarray:
        return self._steps[: self._n]

    def scalar(self, name: str) -> np.ndarray:
        if name not in self._scalars:
            raise KeyError(f"unknown scalar {name!r}; known: {', '.join(SCALARS)}")
        return self._scalars[name][: self._n]

    def layer(self, name: str) -> np.ndarray:
        if name not in self._layers:
            raise KeyError(f"unknown layer quantity {name!r}; known: {', '.join(LAYER_QUANTITIES)}")
        return self._layers[name][: self._n]

    def append(self, step: int, scalars: Mapping[str, float],
               layers: Mapping[str, np.ndarray | list[float]]) -> bool:
        """Record one step; returns False when the stride skips it.

        ``layers[q]`` is a length-``n_layers`` vector; missing quantities stay NaN.
        """
        keep = self._seen % self.stride == 0
        self._seen += 1
        if not keep:
            return False
        if self._n == self.capacity:
            self._compact()
            if (self._seen - 1) % self.stride:
                return False
        i = self._n
        self._steps[i] = step
        for k, buf in self._scalars.items():
            buf[i] = float(scalars.get(k, np.nan))
        for k, buf in self._layers.items():
            if k in layers:
                buf[i] = layers[k]
            else:
                buf[i] = np.nan
        self._n += 1
        return True

    def _compact(self) -> None:
        half = self.capacity // 2
        self._steps[:half] = self._steps[0::2]
        for buf in self._scalars.values():
            buf[:half] = buf[0::2]
        for buf in self._layers.values():
            buf[:half] = buf[0::2]
        self._n = half
        self.stride *= 2

    def nbytes(self) -> int:
        """Bytes held by the buffers (constant for a given capacity and layer count)."""
        return (self._steps.nbytes + sum(b.nbytes for b in self._scalars.values())
                + sum(b.nbytes for b in self._layers.values()))

    def summary(self, quantity: str) -> list[dict[str, float]]:
        """Per layer ``{"first", "last", "median"}`` of ``quantity`` over finite values (NaN if none)."""
        data = self.layer(quantity)
        out = []
        for j in range(len(self.layer_names)):
            col = data[:, j]
            col = col[np.isfinite(col)]
            if col.size:
                out.append({"first": float(col[0]), "last": float(col[-1]), "median": float(np.median(col))})
            else:
                out.append({"first": float("nan"), "last": float("nan"), "median": float("nan")})
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the series to an ``.npz`` (atomically)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "steps": self.steps.copy(),
            "layer_names": np.array(self.layer_names, dtype=str),
            "stride": np.array(self.stride),
        }
        for k in SCALARS:
            arrays[f"scalar/{k}"] = self.scalar(k).copy()
        for k in LAYER_QUANTITIES:
            arrays[f"layer/{k}"] = self.layer(k).copy()
        tmp = p.with_name(f".{p.name}.tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, p)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "History":
        """Read a history written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            names = [str(s) for s in data["layer_names"]]
            n = int(data["steps"].shape[0])
            h = cls(names, capacity=max(4, n + (n % 2)))
            h._n = n
            h._seen = n
            h.stride = int(data["stride"])
            h._steps[:n] = data["steps"]
            for k in SCALARS:
                if f"scalar/{k}" in data:
                    h._scalars[k][:n] = data[f"scalar/{k}"]
            for k in LAYER_QUANTITIES:
                if f"layer/{k}" in data:
                    h._layers[k][:n] = data[f"layer/{k}"]
        return h


class Window:
    """The most recent ``size`` records at full resolution (a ring buffer), for detectors.

    Same quantities as :class:`History`; ``scalar(name)`` is ``(n,)`` and ``layer(name)`` is
    ``(n, n_layers)``, oldest first, ``n <= size``.
    """

    def __init__(self, layer_names: Iterable[str], size: int = 200) -> None:
        if size < 2:
            raise ValueError(f"window size must be >= 2, got {size}")
        self.layer_names = list(layer_names)
        self.size = int(size)
        self._i = 0
        self._n = 0
        self._steps = np.zeros(size, dtype=np.int64)
        self._scalars = {k: np.full(size, np.nan) for k in SCALARS}
        self._layers = {k: np.full((size, len(self.layer_names)), np.nan) for k in LAYER_QUANTITIES}

    def __len__(self) -> int:
        return self._n

    def append(self, step: int, scalars: Mapping[str, float], layers: Mapping[str, np.ndarray]) -> None:
        i = self._i
        self._steps[i] = step
        for k, buf in self._scalars.items():
            buf[i] = float(scalars.get(k, np.nan))
        for k, buf in self._layers.items():
            if k in layers:
                buf[i] = layers[k]
            else:
                buf[i] = np.nan
        self._i = (i + 1) % self.size
        self._n = min(self._n + 1, self.size)

    def _order(self) -> np.ndarray:
        if self._n < self.size:
            return np.arange(self._n)
        return (np.arange(self.size) + self._i) % self.size

    @property
    def steps(self) -> np.ndarray:
        return self._steps[self._order()]

    def scalar(self, name: str, last: int | None = None) -> np.ndarray:
        out = self._scalars[name][self._order()]
        return out if last is None else out[-last:]

    def layer(self, name: str, last: int | None = None) -> np.ndarray:
        out = self._layers[name][self._order()]
        return out if last is None else out[-last:]
