"""Data-parallel support for the PyTorch adapter (``torch.distributed``).

Gradients under DDP are already averaged over ranks, so every rank sees the same gradient statistics.
Activations differ per rank (each sees its own shard of the batch): :func:`reduce_activations` gathers them
so that statistics are computed over the global batch, exactly as a single process would.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def reduce_activations(acts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate every rank's activations along the batch axis (collective: all ranks must call it)."""
    import torch.distributed as dist

    gathered: list[dict[str, np.ndarray] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {k: np.ascontiguousarray(v) for k, v in acts.items()})
    return {k: np.concatenate([g[k] for g in gathered if g is not None and k in g], axis=0) for k in acts}
