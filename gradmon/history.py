"""Compact per-layer series with bounded memory.

A :class:`History` keeps one row per recorded step: model-wide scalars (``loss``, ``grad_norm``,
``clip_coef``, ``lr``) and per-layer quantities (``grad_norm``, ``weight_norm``, ``update_ratio``,
``saturation``, ``dead_fraction``, ``act_mean``, ``act_std``, ``bias_mean``) for each monitored layer.
Memory is bounded by ``capacity`` rows: when the buffers fill up, every other row is dropped and only every
second record is kept from then on (the stride doubles), so a run of any length is summarised at evenly
spaced steps.

Rows are float64; a value that does not apply (saturation of a ReLU layer, say) is NaN.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from core.files import atomic_write
from core.npz import Member, read_npz

SCALARS: tuple[str, ...] = ("loss", "grad_norm", "clip_coef", "lr")
LAYER_QUANTITIES: tuple[str, ...] = (
    "grad_norm", "weight_norm", "update_ratio", "saturation", "dead_fraction", "act_mean", "act_std", "bias_mean",
)
#: the most bytes of arrays :meth:`History.load` reads (a history is capacity × layers × quantities floats)
LOAD_LIMIT = 2**30


class Record:
    """One step's values as two preallocated rows: ``scalars`` ``(len(SCALARS),)`` and ``layers``
    ``(len(LAYER_QUANTITIES), n_layers)``, NaN until set.  The monitor fills one and appends it whole."""

    def __init__(self, n_layers: int) -> None:
        self.step = 0
        self.scalars = np.full(len(SCALARS), np.nan)
        self.layers = np.full((len(LAYER_QUANTITIES), n_layers), np.nan)

    def reset(self, step: int) -> "Record":
        self.step = int(step)
        self.scalars.fill(np.nan)
        self.layers.fill(np.nan)
        return self

    def set_scalar(self, name: str, value: float) -> None:
        self.scalars[_SCALAR_INDEX[name]] = value

    def set_layer(self, name: str, values: np.ndarray) -> None:
        self.layers[_LAYER_INDEX[name]] = values

    def layer(self, name: str) -> np.ndarray:
        return self.layers[_LAYER_INDEX[name]]

    def scalar(self, name: str) -> float:
        return float(self.scalars[_SCALAR_INDEX[name]])

    @classmethod
    def from_dicts(cls, step: int, scalars: Mapping[str, float], layers: Mapping[str, np.ndarray],
                   n_layers: int) -> "Record":
        rec = cls(n_layers).reset(step)
        for k, v in scalars.items():
            if k in _SCALAR_INDEX:
                rec.set_scalar(k, float(v))
        for k, v in layers.items():
            rec.set_layer(k, v)
        return rec


_SCALAR_INDEX = {k: i for i, k in enumerate(SCALARS)}
_LAYER_INDEX = {k: i for i, k in enumerate(LAYER_QUANTITIES)}


class _Buffers:
    """Row storage shared by :class:`History` and :class:`Window`: ``size`` rows of steps, scalars and
    per-layer quantities."""

    def __init__(self, layer_names: Iterable[str], size: int) -> None:
        self.layer_names = list(layer_names)
        self._steps = np.zeros(size, dtype=np.int64)
        self._scalars = np.full((size, len(SCALARS)), np.nan)
        self._layers = np.full((size, len(LAYER_QUANTITIES), len(self.layer_names)), np.nan)

    def _write(self, i: int, record: Record) -> None:
        self._steps[i] = record.step
        self._scalars[i] = record.scalars
        self._layers[i] = record.layers

    def _rows(self) -> np.ndarray | slice:
        raise NotImplementedError

    def _last(self, last: int | None) -> np.ndarray | slice:
        """The rows of the ``last`` records (all with None), oldest first; only those are copied out."""
        rows = self._rows()
        if last is None:
            return rows
        if isinstance(rows, slice):
            return slice(max(rows.start, rows.stop - last), rows.stop)
        return rows[-last:] if last > 0 else rows[:0]

    @property
    def steps(self) -> np.ndarray:
        return self._steps[self._rows()]

    def scalar(self, name: str, last: int | None = None) -> np.ndarray:
        if name not in _SCALAR_INDEX:
            raise KeyError(f"unknown scalar {name!r}; known: {', '.join(SCALARS)}")
        return self._scalars[self._last(last), _SCALAR_INDEX[name]]

    def layer(self, name: str, last: int | None = None) -> np.ndarray:
        if name not in _LAYER_INDEX:
            raise KeyError(f"unknown layer quantity {name!r}; known: {', '.join(LAYER_QUANTITIES)}")
        return self._layers[self._last(last), _LAYER_INDEX[name], :]

    def layers(self, last: int | None = None) -> np.ndarray:
        """Every per-layer quantity at once, ``(n, len(LAYER_QUANTITIES), n_layers)``, oldest first."""
        return self._layers[self._last(last)]

    def append(self, step: int, scalars: Mapping[str, float], layers: Mapping[str, np.ndarray]) -> bool:
        """Record one step from dicts (``layers[q]`` is a length-``n_layers`` vector; missing ones stay NaN)."""
        return self.append_record(Record.from_dicts(step, scalars, layers, len(self.layer_names)))

    def append_record(self, record: Record) -> bool:
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes held by the buffers (constant for a given size and layer count)."""
        return self._steps.nbytes + self._scalars.nbytes + self._layers.nbytes


class History(_Buffers):
    """Bounded buffers of per-step scalars and per-layer quantities over a whole run.

    Shapes: ``steps`` is ``(n,)``; ``scalar(name)`` is ``(n,)``; ``layer(name)`` is ``(n, n_layers)``,
    column ``j`` belonging to ``layer_names[j]``.
    """

    def __init__(self, layer_names: Iterable[str], capacity: int = 2048) -> None:
        if capacity < 4 or capacity % 2:
            raise ValueError(f"capacity must be an even number >= 4, got {capacity}")
        super().__init__(layer_names, capacity)
        self.capacity = int(capacity)
        self.stride = 1
        self._seen = 0
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def _rows(self) -> slice:
        return slice(0, self._n)

    def append_record(self, record: Record) -> bool:
        """Keep ``record`` (copied) unless the stride skips it; returns whether it was kept."""
        keep = self._seen % self.stride == 0
        self._seen += 1
        if not keep:
            return False
        if self._n == self.capacity:
            self._compact()
            if (self._seen - 1) % self.stride:
                return False
        self._write(self._n, record)
        self._n += 1
        return True

    def _compact(self) -> None:
        half = self.capacity // 2
        for buf in (self._steps, self._scalars, self._layers):
            buf[:half] = buf[0::2]
        self._n = half
        self.stride *= 2

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
        arrays: dict[str, np.ndarray] = {
            "steps": self.steps.copy(),
            "layer_names": np.array(self.layer_names, dtype=str),
            "stride": np.array(self.stride),
        }
        for k in SCALARS:
            arrays[f"scalar/{k}"] = self.scalar(k).copy()
        for k in LAYER_QUANTITIES:
            arrays[f"layer/{k}"] = self.layer(k).copy()
        return atomic_write(p, lambda fh: np.savez_compressed(fh, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "History":
        """Read a history written by :meth:`save`.  A damaged file (truncated, bit-flipped, arrays of the
        wrong shapes, not a history at all) is one ValueError naming it; sizes are checked before any data
        is read (:func:`core.npz.read_npz`), and nothing pickled is ever loaded."""
        p = os.fspath(path)

        def check(members: Mapping[str, Member]) -> None:
            missing = [k for k in ("steps", "layer_names", "stride") if k not in members]
            if missing:
                raise ValueError(f"not a gradmon history: it has no {', '.join(missing)}")
            steps, names = members["steps"], members["layer_names"]
            if len(steps.shape) != 1 or steps.dtype.kind not in "iu":
                raise ValueError(f"not a gradmon history: steps is {steps.dtype} of shape {steps.shape}")
            if len(names.shape) != 1 or names.dtype.kind != "U":
                raise ValueError(f"not a gradmon history: layer_names is {names.dtype} of shape {names.shape}")
            if members["stride"].shape != () or members["stride"].dtype.kind not in "iu":
                raise ValueError("not a gradmon history: stride is not an integer")
            n, n_layers = steps.shape[0], names.shape[0]
            for group, keys, shape in (("scalar", SCALARS, (n,)), ("layer", LAYER_QUANTITIES, (n, n_layers))):
                for k in keys:
                    m = members.get(f"{group}/{k}")
                    if m is not None and (m.shape != shape or m.dtype.kind not in "fiu"):
                        raise ValueError(f"not a gradmon history: {group}/{k} is {m.dtype} of shape {m.shape}, "
                                         f"expected numbers of shape {shape}")

        data = read_npz(p, LOAD_LIMIT, "history", check)
        stride = int(data["stride"])
        if stride < 1:
            raise ValueError(f"{p}: not a gradmon history: stride {stride} is not a positive integer")
        names = [str(s) for s in data["layer_names"]]
        n = int(data["steps"].shape[0])
        h = cls(names, capacity=max(4, n + (n % 2)))
        h._n = h._seen = n
        h.stride = stride
        h._steps[:n] = data["steps"]
        for i, k in enumerate(SCALARS):
            if f"scalar/{k}" in data:
                h._scalars[:n, i] = data[f"scalar/{k}"]
        for i, k in enumerate(LAYER_QUANTITIES):
            if f"layer/{k}" in data:
                h._layers[:n, i, :] = data[f"layer/{k}"]
        return h


class Window(_Buffers):
    """The most recent ``size`` records at full resolution (a ring buffer), for detectors.

    Same quantities as :class:`History`; ``scalar(name)`` is ``(n,)`` and ``layer(name)`` is
    ``(n, n_layers)``, oldest first, ``n <= size``.
    """

    def __init__(self, layer_names: Iterable[str], size: int = 200) -> None:
        if size < 2:
            raise ValueError(f"window size must be >= 2, got {size}")
        super().__init__(layer_names, size)
        self.size = int(size)
        self._i = 0
        self._n = 0
        self._order = np.arange(self.size)  # row order, oldest first, once the ring is full
        self._order_at = 0                  # the write position _order was made for

    def __len__(self) -> int:
        return self._n

    def append_record(self, record: Record) -> bool:
        self._write(self._i, record)
        self._i = (self._i + 1) % self.size
        self._n = min(self._n + 1, self.size)
        return True

    def _rows(self) -> np.ndarray | slice:
        if self._n < self.size:
            return slice(0, self._n)
        if self._order_at != self._i:  # detectors read many series per judgment: one order for all of them
            self._order = (np.arange(self.size) + self._i) % self.size
            self._order_at = self._i
        return self._order
