"""Checkpoints: model parameters, BatchNorm statistics, optimizer state and the trainer's position and
random generators, in one ``.npz`` written atomically (:func:`core.files.atomic_write`: temp file, fsync,
rename; the file gets the usual permissions of a new file) and read with ``allow_pickle=False``.  Loading
into a trainer built the same way resumes training exactly: the rest of the run is bitwise identical to a
run that was never interrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from core.files import atomic_write

FORMAT = "core.checkpoint/1"


def save_checkpoint(path: str | os.PathLike, trainer: Any) -> Path:
    """Write ``trainer``'s model, optimizer and progress to ``path`` (an ``.npz``), atomically."""
    p = Path(path)
    arrays: dict[str, np.ndarray] = {}
    for k, v in trainer.model.state_dict().items():
        arrays[f"model/{k}"] = v
    for k, v in trainer.optimizer.state_dict().items():
        arrays[f"optimizer/{k}"] = np.asarray(v)
    meta = {"format": FORMAT, "step": int(trainer.step), "epoch": int(trainer.epoch),
            "optimizer": type(trainer.optimizer).__name__, "hyperparams": trainer.optimizer.hyperparams,
            "shuffle_rng": trainer.rng.bit_generator.state,
            "dropout_rng": trainer.model.dropout_rng.bit_generator.state}
    arrays["meta"] = np.array(json.dumps(meta))
    return atomic_write(p, lambda fh: np.savez(fh, **arrays))


def load_checkpoint(path: str | os.PathLike, trainer: Any) -> dict[str, Any]:
    """Restore a checkpoint into ``trainer`` (built with the same model and optimizer); returns its meta."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}")
    try:
        data = np.load(p, allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError("not an .npz archive")
        with data:
            meta = json.loads(str(data["meta"]))
            model_state = {k[len("model/"):]: np.array(data[k]) for k in data.files if k.startswith("model/")}
            opt_state = {k[len("optimizer/"):]: np.array(data[k]) for k in data.files if k.startswith("optimizer/")}
    except (OSError, KeyError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{p}: not a readable checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p} is not a core checkpoint (format {meta.get('format')!r})")
    if meta["optimizer"] != type(trainer.optimizer).__name__:
        raise ValueError(f"{p} holds {meta['optimizer']} state, the trainer uses {type(trainer.optimizer).__name__}")
    trainer.model.load_state_dict(model_state)
    trainer.optimizer.load_state_dict(opt_state)
    trainer.step = meta["step"]
    trainer.epoch = meta["epoch"]
    trainer.rng.bit_generator.state = meta["shuffle_rng"]
    trainer.model.dropout_rng.bit_generator.state = meta["dropout_rng"]
    return meta
