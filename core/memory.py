"""The size check: what a run spec would need in memory, estimated before anything is allocated.

A spec whose estimate exceeds :data:`MEMORY_LIMIT` is refused with one line naming the key to change
(``data.n_samples``, ``model.hidden``, ``train.batch_size``, or for the curvature workspace
``monitor.curvature_every`` and ``monitor.curvature_samples``), instead of a run that swaps or is killed.
"""

from __future__ import annotations

from typing import Any, Mapping

#: the largest estimated memory a spec may need (data, parameters with gradients and optimizer state,
#: activations of one batch); beyond it a spec is rejected before anything is allocated
MEMORY_LIMIT = 8 * 2**30
#: Lanczos iterations of a curvature estimate at most (gradmon's ``Monitor(curvature_max_iter=40)``): its basis
#: is ``(CURVATURE_MAX_ITER + 1) × n_params`` float64
CURVATURE_MAX_ITER = 40


class MemoryLimitError(ValueError):
    """A spec too large for :data:`MEMORY_LIMIT`; the message names the key (core.spec raises it as its
    SpecError)."""


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def data_bytes(n_samples: int, n_features: int) -> int:
    """The memory a data set of ``n_samples`` rows of ``n_features`` features (and a target) needs while it is
    loaded, split and standardised: float64 values, about 4 copies."""
    return 8 * 4 * int(n_samples) * (int(n_features) + 1)


def check_memory(spec: Mapping[str, Any], n_samples: int, n_features: int, n_outputs: int) -> None:
    """MemoryLimitError naming the key that makes the run need more than :data:`MEMORY_LIMIT` (estimated).

    The estimate: the data (``n_samples × (n_features + 1)`` float64 values, about 4 copies while loading,
    splitting and standardising); the network (parameters, gradients, updates, optimizer state and
    checkpoint copies: 40 bytes per parameter); one batch's activations and their gradients through every
    layer (about 6 float32 buffers per unit); and, with curvature on, its workspace
    (:func:`curvature_workspace`).  ``n_samples = 0``: the data size is not known yet.
    """
    model, train = spec["model"], spec["train"]
    widths = [n_features, *model["hidden"], n_outputs]
    n_params = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    n_params += 2 * sum(model["hidden"]) if model["batchnorm"] else 0
    batch = n_samples if train["batch_size"] == "full" else min(train["batch_size"], max(n_samples, 1))
    basis, probe = curvature_workspace(spec, n_params, widths, n_samples)
    parts = {
        "data.n_samples": data_bytes(n_samples, n_features),
        "model.hidden": 40 * n_params,
        "train.batch_size": 4 * 6 * batch * sum(widths),
        "monitor.curvature_every": basis,
        "monitor.curvature_samples": probe,
    }
    total = sum(parts.values())
    if total <= MEMORY_LIMIT:
        return
    # blame the key that alone is too much (a network too big for even one example is model.hidden's)
    alone = {"data.n_samples": parts["data.n_samples"],
             "model.hidden": parts["model.hidden"] + 4 * 6 * sum(widths),
             "train.batch_size": parts["train.batch_size"],
             "monitor.curvature_every": basis, "monitor.curvature_samples": probe}
    key = next((k for k, v in alone.items() if v > MEMORY_LIMIT), max(parts, key=parts.get))
    need, limit = _bytes(total), _bytes(MEMORY_LIMIT)
    if key == "monitor.curvature_every":
        raise MemoryLimitError(f"monitor.curvature_every: curvature on a network of {n_params:,} parameters keeps a "
                               f"Lanczos basis of {CURVATURE_MAX_ITER + 1} float64 vectors ({_bytes(basis)}); the run "
                               f"needs about {need}, over the {limit} limit; set monitor.curvature_every = 0 to turn "
                               f"curvature off, or use fewer or narrower hidden layers")
    if key == "monitor.curvature_samples":
        raise MemoryLimitError(f"monitor.curvature_samples: a curvature probe of {spec['monitor']['curvature_samples']:,} "
                               f"examples through {sum(widths):,} units needs about {_bytes(probe)}; the run needs "
                               f"about {need}, over the {limit} limit; use fewer curvature_samples")
    if key == "data.n_samples":
        raise MemoryLimitError(f"data.n_samples: {n_samples:,} examples of {n_features} features need about {need} "
                        f"of memory, over the {limit} limit; use fewer samples")
    if key == "model.hidden":
        raise MemoryLimitError(f"model.hidden: a network of {n_params:,} parameters needs about {need} of memory to "
                        f"train, over the {limit} limit; use fewer or narrower hidden layers")
    raise MemoryLimitError(f"train.batch_size: batches of {batch:,} examples through {sum(widths):,} units need about "
                    f"{need} of memory, over the {limit} limit; use a smaller batch_size")




def curvature_workspace(spec: Mapping[str, Any], n_params: int, widths: list[int], n_samples: int) -> tuple[int, int]:
    """Bytes of a curvature estimate's workspace, ``(basis, probe)``; ``(0, 0)`` when curvature is off
    (``monitor.curvature_every = 0``, or no cadence and ``monitor.curvature_budget = 0``).

    ``basis``: the Lanczos basis, ``(CURVATURE_MAX_ITER + 1) × n_params`` float64, plus about 8 more float64
    vectors of the parameters' size (the float64 copy of the parameters, products, the warm-start vector).
    ``probe``: the linearised probe set in float64 (forward caches, tangents and their gradients: about 8
    buffers per unit and example) and the exact trace's back-propagated seeds (one per output).
    """
    monitor = spec.get("monitor") or {}
    every = monitor.get("curvature_every")
    if every == 0 or (every is None and not monitor.get("curvature_budget", 0.05)):
        return 0, 0
    basis = 8 * (CURVATURE_MAX_ITER + 1 + 8) * n_params
    probe_n = min(int(monitor.get("curvature_samples", 1024)), max(n_samples, 1))
    probe = 8 * probe_n * (8 * sum(widths) + 2 * widths[-1] * max(widths))
    return basis, probe
