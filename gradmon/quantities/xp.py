"""Array namespaces: the quantities are written once, over the Python array API, and run on numpy arrays
(core's loop) and on PyTorch tensors where they live (the adapter; any device).

:func:`namespace` gives the namespace of some arrays (``array_api_compat``).  A few reductions that the
standard has no fused form for (the norm of each of many tensors, a histogram) are here, with a fused
implementation per backend (``torch._foreach_norm``, ``torch.histc``) behind one signature.

Everything a statistic needs on the host passes through :func:`to_host`, once per recorded step, as a
small vector (one value per tensor or per unit, never per parameter): :data:`HOST_TRANSFERS` counts the
elements it moved, so tests and benchmarks can prove that.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from array_api_compat import array_namespace, is_numpy_array, is_torch_array

Array = Any  # an array of the Python array API: numpy.ndarray or torch.Tensor


class _Counter:
    """Elements and calls that crossed from a device to the host through :func:`to_host`."""

    def __init__(self) -> None:
        self.calls = 0
        self.elements = 0

    def reset(self) -> None:
        self.calls = self.elements = 0


#: what :func:`to_host` moved so far (``reset()`` it around the code to measure)
HOST_TRANSFERS = _Counter()


#: numpy 2.1 and later implement the array API in their main namespace: use it directly (no wrapper calls on
#: core's per-step path)
_NUMPY_IS_ARRAY_API = tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 1)


#: namespaces already looked up, by array type (the lookup costs microseconds; the per-step path asks often)
_BY_TYPE: dict[type, Any] = {}


def namespace(*arrays: Array) -> Any:
    """The array namespace of ``arrays``: ``numpy`` itself for numpy arrays (numpy >= 2.1; the
    ``array_api_compat`` wrapper before), ``array_api_compat.torch`` for tensors."""
    kind = type(arrays[0])
    if len(arrays) == 1 or all(type(a) is kind for a in arrays):
        found = _BY_TYPE.get(kind)
        if found is None:
            found = np if _NUMPY_IS_ARRAY_API and kind is np.ndarray else array_namespace(arrays[0])
            _BY_TYPE[kind] = found
        return found
    return array_namespace(*arrays)


def is_torch(x: Array) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch)."""
    return is_torch_array(x)


def to_host(x: Array) -> np.ndarray:
    """A float64 numpy copy of the small array ``x`` (the one device-to-host transfer of a step).  Numpy
    input is returned as float64 without counting: it never left the host."""
    if is_numpy_array(x) or isinstance(x, (float, int, list, tuple)):
        return np.asarray(x, dtype=np.float64)
    import torch

    HOST_TRANSFERS.calls += 1
    HOST_TRANSFERS.elements += int(x.numel())
    if x.device.type == "cpu" and not x.requires_grad and x.dtype in (torch.float32, torch.float64):
        return x.numpy().astype(np.float64)  # already in host memory: numpy's view of it, widened there
    with torch.no_grad():
        return x.detach().to(dtype=torch.float64, device="cpu").numpy()


def _numpy_norm(a: np.ndarray) -> float:
    """L2 norm as a Python float: a dot product in the array's dtype (half precision summed in float32),
    recounted in float64 when float32 overflows on finite values (a huge but finite gradient is not Inf)."""
    flat = a.reshape(-1)
    if flat.dtype == np.float16:
        flat = flat.astype(np.float32)
    sq = float(np.dot(flat, flat)) if flat.dtype.kind == "f" else float(np.dot(flat, flat.astype(np.float64)))
    if math.isinf(sq) and bool(np.isfinite(flat).all()):
        wide = flat.astype(np.float64)
        sq = float(np.dot(wide, wide))
    return math.sqrt(sq) if sq >= 0 else float("nan")


def norms(arrays: Sequence[Array]) -> Array:
    """The L2 norm of each array, shape ``(len(arrays),)``, on the arrays' device (float64 numpy for numpy
    arrays, float32 or wider tensors for torch; NaN/Inf propagate).  One fused reduction for tensors."""
    if not arrays:
        return np.zeros(0)
    if is_numpy_array(arrays[0]):
        with np.errstate(over="ignore", invalid="ignore"):
            return np.array([_numpy_norm(a) for a in arrays], dtype=np.float64)
    import torch

    with torch.no_grad():
        tensors = [a.detach() if a.requires_grad else a for a in arrays]
        wide = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        out = list(torch._foreach_norm(tensors, 2, dtype=wide))
        device = out[0].device
        if any(n.device != device for n in out):  # parameters spread over devices (model parallel)
            out = [n.to(device) for n in out]
        return torch.stack(out)


def all_finite(a: Array) -> bool:
    """Whether every entry of ``a`` is finite (a host bool: only for the rare paths that locate NaN/Inf)."""
    if is_numpy_array(a):
        with np.errstate(over="ignore", invalid="ignore"):
            return math.isfinite(_numpy_norm(a)) or bool(np.isfinite(a).all())
    import torch

    with torch.no_grad():
        return bool(torch.isfinite(a.detach()).all())


def log10_magnitudes(values: Array) -> Array:
    """``log10(|values|)`` where the values live (zeros give -inf, which :func:`histogram` leaves out)."""
    xp = namespace(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        return xp.log10(xp.abs(values))


def sample(values: Array, max_values: int = 4096) -> Array:
    """The entries of ``values`` flattened, or an evenly strided sample of about ``max_values`` of them for a
    larger array (the sample :func:`histogram` represents it by; elementwise maps such as
    :func:`log10_magnitudes` commute with it, so apply them to the sample, not to the whole array)."""
    flat = namespace(values).reshape(values, (-1,))
    n = int(flat.shape[0])
    return flat[:: n // max_values] if n > max_values else flat


def histogram(values: Array, bins: int = 64, max_values: int = 4096) -> dict[str, Any] | None:
    """A histogram of the finite entries of ``values`` in ``bins`` equal-width buckets, computed where the
    values live; only the counts and summary numbers come to the host.  Large arrays are represented by an
    evenly strided sample of about ``max_values`` entries.  Returns ``{"min", "max", "num", "sum",
    "sum_squares", "edges" (bins + 1), "counts" (bins)}`` as host numbers, or None without finite entries."""
    flat = sample(values, max_values)
    if is_numpy_array(flat):
        data = flat.astype(np.float64)
        data = data[np.isfinite(data)]
        if not data.size:
            return None
        lo, hi = float(data.min()), float(data.max())
        width = (hi - lo) / bins if hi > lo else 1.0
        index = np.minimum(((data - lo) / width).astype(np.int64), bins - 1)
        counts = np.bincount(index, minlength=bins).astype(np.float64)
        total, squares, num = float(data.sum()), float(np.dot(data, data)), data.size
    else:
        import torch

        with torch.no_grad():
            data = flat.detach().to(torch.float64)
            data = data[torch.isfinite(data)]
            if not int(data.numel()):
                return None
            summary = to_host(torch.stack([data.min(), data.max(), data.sum(), (data * data).sum()]))
            lo, hi, total, squares = (float(v) for v in summary)
            counts = to_host(torch.histc(data, bins=bins, min=lo, max=hi if hi > lo else lo + bins))
            width = (hi - lo) / bins if hi > lo else 1.0
            num = int(counts.sum())
    return {"min": lo, "max": hi, "num": int(num), "sum": total, "sum_squares": squares,
            "edges": lo + width * np.arange(bins + 1), "counts": counts}
