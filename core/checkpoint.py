"""Checkpoints: model parameters, BatchNorm statistics, optimizer state and the trainer's position and
random generators, in one ``.npz`` written atomically (:func:`core.files.atomic_write`: temp file, fsync,
rename; the file gets the usual permissions of a new file) and read safely (:func:`core.npz.read_npz`:
shapes checked against the trainer before any data is read, never a pickle).  Loading into a trainer built
the same way resumes training exactly: the rest of the run is bitwise identical to a run that was never
interrupted.  A damaged checkpoint is one clear error, and leaves the trainer as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from core.files import atomic_write
from core.npz import Member, read_npz

FORMAT = "core.checkpoint/1"
#: the largest meta (JSON: position, generator states, the spec) a checkpoint may hold, in bytes
META_LIMIT = 2**20


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
    spec = getattr(trainer, "spec", None)
    if spec:  # the run spec it trains, so that a resume can check it is the same run
        meta["spec"] = json.loads(json.dumps(spec, default=str))
    arrays["meta"] = np.array(json.dumps(meta))
    return atomic_write(p, lambda fh: np.savez(fh, **arrays))


def load_checkpoint(path: str | os.PathLike, trainer: Any) -> dict[str, Any]:
    """Restore a checkpoint into ``trainer`` (built with the same model and optimizer); returns its meta.

    Everything is read and checked before anything of the trainer changes: the archive's declared shapes
    against the model's parameters, BatchNorm statistics and optimizer slots (before any data is read),
    then the meta (format, optimizer, position, random generator states).  A damaged or mismatched
    checkpoint is one ValueError naming the file, and the trainer is left exactly as it was.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}")
    model_expected = {f"model/{k}": (v.shape, v.dtype) for k, v in trainer.model.state_dict().items()}
    # the trainer steps its flat parameter vector as one group, "all": every optimizer slot has its shape
    slot_shape, dtype = (int(trainer.model.size),), np.dtype(trainer.model.dtype)

    def check(members: Mapping[str, Member]) -> None:
        for name, m in members.items():
            if name == "meta":
                if m.shape != () or m.dtype.kind != "U" or m.nbytes > META_LIMIT:
                    raise ValueError(f"its meta is a {m.dtype} array of shape {m.shape}, not a JSON string")
            elif name in model_expected:
                shape, kind = model_expected[name]
                if m.shape != shape or m.dtype != kind:
                    raise ValueError(f"{name[6:]} is {m.dtype} of shape {m.shape}; the model has {kind} of shape "
                                     f"{shape}: was it written by a different model?")
            elif name == "optimizer/t":
                if m.shape != () or m.dtype.kind not in "iu":
                    raise ValueError(f"optimizer step count is {m.dtype} of shape {m.shape}, not an integer")
            elif name.startswith("optimizer/"):
                group, _, slot = name[len("optimizer/"):].partition("/")
                if group != "all" or not slot or "/" in slot:
                    raise ValueError(f"optimizer state {name[10:]!r} is not a slot of this trainer's parameters")
                if m.shape != slot_shape or m.dtype != dtype:
                    raise ValueError(f"optimizer slot {slot!r} is {m.dtype} of shape {m.shape}; the model's "
                                     f"parameters are {dtype} of shape {slot_shape}")
            else:
                raise ValueError(f"unexpected array {name!r}")
        missing = [k[6:] for k in model_expected if k not in members] + \
            [k for k in ("meta", "optimizer/t") if k not in members]
        if missing:
            raise ValueError(f"it has no {', '.join(missing)}: was it written by a different model?")

    limit = 4 * sum(int(np.prod(s)) * d.itemsize for s, d in model_expected.values()) \
        + 8 * slot_shape[0] * dtype.itemsize + META_LIMIT + 4096
    arrays = read_npz(p, limit, "checkpoint", check)
    try:
        meta = json.loads(str(arrays["meta"]))
        if not isinstance(meta, dict):
            raise ValueError("the meta is not a JSON object")
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{p}: not a readable checkpoint (its meta: {exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p} is not a core checkpoint (format {meta.get('format')!r})")
    if meta.get("optimizer") != type(trainer.optimizer).__name__:
        raise ValueError(f"{p} holds {meta.get('optimizer')} state, the trainer uses "
                         f"{type(trainer.optimizer).__name__}")
    step, epoch = meta.get("step"), meta.get("epoch")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (step, epoch)):
        raise ValueError(f"{p}: not a readable checkpoint (step {step!r} and epoch {epoch!r} must be integers >= 0)")
    # the generators' states are tried on fresh generators first: a bad state fails here, not half-way
    shuffle = _generator_like(p, trainer.rng, meta.get("shuffle_rng"), "shuffle_rng")
    dropout = _generator_like(p, trainer.model.dropout_rng, meta.get("dropout_rng"), "dropout_rng")
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    opt_state = {k[len("optimizer/"):]: v for k, v in arrays.items() if k.startswith("optimizer/")}
    # everything is checked: swap it in (none of these can fail now)
    trainer.model.load_state_dict(model_state)
    trainer.optimizer.load_state_dict(opt_state)
    trainer.step = step
    trainer.epoch = epoch
    trainer.rng.bit_generator.state = shuffle
    trainer.model.dropout_rng.bit_generator.state = dropout
    return meta


def _generator_like(path: Path, rng: np.random.Generator, state: Any, name: str) -> dict[str, Any]:
    """``state`` once a fresh bit generator of ``rng``'s kind has accepted it, else ValueError naming it."""
    probe = type(rng.bit_generator)()
    try:
        probe.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({name}: {exc})") from None
    return probe.state
