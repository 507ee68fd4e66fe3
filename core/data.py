"""Data sets: generated 2-D classification sets, a regression teacher, the digits, and files.

All generators are ``fn(n_samples, noise, rng, **kw) -> (X, y)`` with ``X`` float64 ``(n, d)`` and ``y``
int64 class labels ``(n,)`` (classification) or float64 targets ``(n, k)`` (regression).

>>> ds = load_dataset("moons", n_samples=200, seed=0)
>>> ds.X_train.shape, ds.n_classes
((160, 2), 2)
"""

from __future__ import annotations

import array
import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from core.files import file_size, open_regular
from core.memory import MEMORY_LIMIT, data_bytes
from core.npz import Member, read_npz

Generator = Callable[..., tuple[np.ndarray, np.ndarray]]


@dataclass
class Dataset:
    """Train and test splits.  ``n_classes`` is 0 for regression."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    task: str
    n_classes: int
    n_features: int

    @property
    def n_outputs(self) -> int:
        if self.task == "classification":
            return self.n_classes
        return 1 if self.y_train.ndim == 1 else int(self.y_train.shape[1])


# -- generators ---------------------------------------------------------------------------------------------
def spirals(n_samples: int, noise: float, rng: np.random.Generator, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n_classes`` interleaved spiral arms."""
    y = np.arange(n_samples) % n_classes
    r = rng.uniform(0.05, 1.0, n_samples)
    theta = y * 2 * np.pi / n_classes + r * 4.0 + rng.normal(0, noise, n_samples) * 2
    return np.stack([r * np.sin(theta), r * np.cos(theta)], 1), y.astype(np.int64)


def moons(n_samples: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles."""
    t = rng.uniform(0, np.pi, n_samples)
    y = (rng.random(n_samples) < 0.5).astype(np.int64)
    X = np.stack([np.where(y == 0, np.cos(t), 1 - np.cos(t)), np.where(y == 0, np.sin(t), 0.5 - np.sin(t))], 1)
    return X + rng.normal(0, noise, X.shape), y


def circles(n_samples: int, noise: float, rng: np.random.Generator, factor: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A small circle inside a large one."""
    t = rng.uniform(0, 2 * np.pi, n_samples)
    y = (rng.random(n_samples) < 0.5).astype(np.int64)
    r = np.where(y == 1, factor, 1.0)
    X = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    return X + rng.normal(0, noise, X.shape), y


def xor(n_samples: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Four quadrants, opposite ones sharing a class."""
    X = rng.uniform(-1, 1, (n_samples, 2))
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(np.int64)
    return X + rng.normal(0, noise, X.shape), y


def blobs(n_samples: int, noise: float, rng: np.random.Generator, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around centres on a circle of radius 2; ``noise`` scales their spread (plus 0.5)."""
    y = np.arange(n_samples) % n_classes
    angles = 2 * np.pi * np.arange(n_classes) / n_classes
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    return centres[y] + rng.normal(0, 0.5 + noise, (n_samples, 2)), y.astype(np.int64)


def teacher(n_samples: int, noise: float, rng: np.random.Generator, n_features: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Regression from a random one-layer tanh teacher: ``y = tanh(X @ w) + noise * N(0, 1)``."""
    X = rng.normal(size=(n_samples, n_features))
    w = rng.normal(size=(n_features, 1))
    return X, np.tanh(X @ w) + noise * rng.normal(size=(n_samples, 1))


def digits(n_samples: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 handwritten digits scikit-learn ships (1797 images, 10 classes), pixels scaled to [0, 1];
    ``n_samples`` caps the count (a random subset), ``noise`` is ignored."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError('the digits data set comes with scikit-learn: pip install "gradmon[digits]"') from None
    d = load_digits()
    X, y = d.data / 16.0, d.target.astype(np.int64)
    if n_samples < len(X):
        idx = np.sort(rng.permutation(len(X))[:n_samples])
        X, y = X[idx], y[idx]
    return X, y


DATASETS: dict[str, Generator] = {
    "spirals": spirals, "moons": moons, "circles": circles, "xor": xor, "blobs": blobs, "teacher": teacher,
    "digits": digits,
}
REGRESSION = frozenset({"teacher"})
#: generated 2-D sets are standardised with the train split's statistics
STANDARDISE = frozenset({"spirals", "moons", "circles", "xor", "blobs"})


# -- files --------------------------------------------------------------------------------------------------
TASKS = ("auto", "classification", "regression")
#: the largest .csv read (parsed as text; an .npz holds more in less memory)
CSV_LIMIT = 256 * 2**20


def _check(path: Path, X: np.ndarray, y: np.ndarray) -> None:
    if X.ndim != 2:
        raise ValueError(f"{path}: X must be 2-D (samples, features), got shape {X.shape}")
    if X.size == 0 or len(X) == 0:
        raise ValueError(f"{path}: the data is empty")
    if y.ndim not in (1, 2):
        raise ValueError(f"{path}: y must have shape (n,) or (n, k), got {y.shape}")
    if len(y) != len(X):
        raise ValueError(f"{path}: X has {len(X)} rows but y has {len(y)}")
    if not np.isfinite(X).all():
        raise ValueError(f"{path}: X contains NaN or Inf")
    if not np.isfinite(y).all():
        raise ValueError(f"{path}: y contains NaN or Inf")


def _numeric_array(path: Path, name: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` as float64, or ValueError naming the file when it holds strings or other non-numbers."""
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{path}: array {name} holds {arr.dtype} values, not numbers; store numeric arrays "
                         f"(np.savez(path, X=X.astype(float), y=y))")
    return arr.astype(np.float64, copy=False)


def _integral(y: np.ndarray) -> bool:
    return bool(np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_ or np.all(y == np.round(y)))


def file_task(path: str | os.PathLike, y: np.ndarray, task: str = "auto") -> str:
    """``classification`` or ``regression`` for targets ``y`` read from ``path``.

    ``task="auto"``: class labels when ``y`` is one column of whole numbers (an integer array, or floats like
    ``2.0``), else regression.  Name the task (``data.task`` in a spec) when a regression file's targets
    happen to be whole numbers.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if task != "auto":
        return task
    one_column = y.ndim == 1 or y.shape[1] == 1
    if one_column and _integral(y):
        return "classification"
    if not one_column and (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ValueError(f"{Path(path)}: y has shape {y.shape} and holds integers: class labels need shape (n,); "
                         f"for {y.shape[1]} real-valued targets per row set data.task = \"regression\"")
    return "regression"


def _labels(path: Path, y: np.ndarray, n_classes: int | None) -> tuple[np.ndarray, int]:
    """Class labels as given (int64 ``(n,)``) and the class count: ``n_classes`` or the largest label + 1."""
    if y.ndim == 2:
        if y.shape[1] != 1:
            raise ValueError(f"{path}: class labels need shape (n,), got y of shape {y.shape}; for real-valued "
                             f"targets set data.task = \"regression\"")
        y = y[:, 0]
    if not _integral(y):
        raise ValueError(f"{path}: class labels must be whole numbers, found {float(y[y != np.round(y)][0]):g}; for "
                         f"real-valued targets set data.task = \"regression\"")
    if y.dtype != np.bool_ and len(y) and float(np.max(np.abs(y.astype(np.float64)))) >= 2.0**53:
        big = y[np.abs(y.astype(np.float64)) >= 2.0**53][0]
        raise ValueError(f"{path}: class label {float(big):g} is too large to be a class label; for real-valued "
                         f"targets set data.task = \"regression\"")
    labels = y.astype(np.int64, copy=False)
    if labels.min() < 0:
        raise ValueError(f"{path}: class labels must be >= 0, found {labels.min()}; for real-valued targets set "
                         f"data.task = \"regression\"")
    distinct = np.unique(labels)
    if len(distinct) < 2:
        raise ValueError(f"{path}: all {len(labels)} examples have class {distinct[0]}; classification needs at "
                         f"least 2 distinct classes")
    top = int(labels.max())
    if n_classes is None:
        n_classes = top + 1
    elif top >= n_classes:
        raise ValueError(f"{path}: class label {top} is out of range for n_classes = {n_classes} (labels must "
                         f"be in [0, {n_classes - 1}])")
    return labels, int(n_classes)


def load_file(path: str | os.PathLike, task: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """``X`` (float64 ``(n, d)``) and ``y`` from an ``.npz`` (arrays X and y, no pickled objects) or a
    ``.csv`` (last column is y; a header row is detected and skipped).

    ``y`` is int64 class labels ``(n,)`` (kept as given, >= 0) when the task (see :func:`file_task`) is
    classification, else float64 targets ``(n,)`` or ``(n, k)``.  Every error names the file.
    """
    X, y, _, _ = _read_file(Path(path), task, None)
    return X, y


def _read_file(p: Path, task: str, n_classes: int | None) -> tuple[np.ndarray, np.ndarray, str, int | None]:
    """:func:`load_file`, plus the task and (classification) the class count (see :func:`_labels`)."""
    if not p.exists():
        raise ValueError(f"{p}: no such data file")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        X, y = _read_npz(p)
    elif suffix == ".csv":
        X, y = _read_csv(p)
    else:
        raise ValueError(f"{p}: unsupported data file type {suffix!r}; use .npz (X, y) or .csv (y last)")
    _check(p, X, y)
    task = file_task(p, y, task)
    if task == "classification":
        y, n_classes = _labels(p, y, n_classes)
    elif n_classes is not None:
        raise ValueError(f"{p}: n_classes applies to class labels, but the targets are real-valued")
    else:
        y = y.astype(np.float64, copy=False)
    return X, y, task, n_classes


def _read_npz(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays X (as float64) and y of an ``.npz``; their declared shapes are checked against
    :data:`~core.memory.MEMORY_LIMIT` before a byte of data is read, and nothing pickled is ever loaded."""
    def check(members: Mapping[str, Member]) -> None:
        missing = [k for k in ("X", "y") if k not in members]
        if missing:
            raise ValueError(f"missing array {' and '.join(missing)} (an .npz needs arrays X and y)")
        X = members["X"]
        n, d = (X.shape[0], math.prod(X.shape[1:])) if X.shape else (1, 1)
        if data_bytes(n, d) > MEMORY_LIMIT:
            raise ValueError(f"X declares shape {X.shape}: {n:,} examples of {d:,} feature{'s' * (d != 1)} need about "
                             f"{data_bytes(n, d) / 2**30:.3g} GiB while loading, over the "
                             f"{MEMORY_LIMIT / 2**30:.3g} GiB limit; use fewer examples")
        for key in ("X", "y"):
            dtype = members[key].dtype
            if not (dtype == np.bool_ or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
                raise ValueError(f"array {key} holds {dtype} values, not numbers; store numeric arrays "
                                 f"(np.savez(path, X=X.astype(float), y=y))")

    # X and y as float64 are the bulk; a second copy is made while converting
    arrays = read_npz(p, MEMORY_LIMIT // 4, "data file", check)
    return _numeric_array(p, "X", arrays["X"]).astype(np.float64, copy=False), _numeric_array(p, "y", arrays["y"])


def _read_csv(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """Columns of a ``.csv`` (UTF-8, a byte-order mark allowed; a header row skipped): all but the last as
    X, the last as y (float64).  Files over :data:`CSV_LIMIT` are refused before reading."""
    try:
        with open_regular(p, "data file") as raw:
            size = file_size(raw)
            if size > CSV_LIMIT:
                raise ValueError(f"{p}: the CSV file is {size / 2**20:.3g} MiB, over the {CSV_LIMIT // 2**20} MiB "
                                 f"read as text; store the data as .npz (np.savez(path, X=X, y=y))")
            values, width, rows, first = array.array("d"), 0, 0, True
            with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as fh:
                for line, row in enumerate(csv.reader(fh), 1):
                    if not row or not any(c.strip() for c in row):
                        continue
                    cells = _floats(row)
                    if cells is None and first:  # a header row
                        first = False
                        continue
                    first = False
                    if cells is None:
                        raise ValueError(f"{p}: a cell is not a number (line {line})")
                    width = width or len(cells)
                    if len(cells) != width or width < 2:
                        raise ValueError(f"{p}: every row needs the same number (>= 2) of columns, y last "
                                         f"(line {line} has {len(cells)})")
                    values.extend(cells)
                    rows += 1
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{p}: cannot read it as CSV ({exc})") from None
    if not rows:
        raise ValueError(f"{p}: the data is empty")
    table = np.frombuffer(values, dtype=np.float64).reshape(rows, width)
    return table[:, :-1].copy(), table[:, -1].copy()


def _floats(row: list[str]) -> list[float] | None:
    """The cells of a row as numbers, or None when one is not a number."""
    try:
        return [float(c) for c in row]
    except ValueError:
        return None


# -- the data set a spec asks for ---------------------------------------------------------------------------
#: features and outputs of the built-in sets (outputs: classes, or targets for regression), for size estimates
SHAPES: dict[str, tuple[int, int]] = {"spirals": (2, 3), "moons": (2, 2), "circles": (2, 2), "xor": (2, 2),
                                      "blobs": (2, 3), "teacher": (10, 1), "digits": (64, 10)}
#: built-in sets whose generator takes ``n_classes``
CLASS_COUNT = frozenset({"spirals", "blobs"})
#: the digits set has this many images, whatever ``n_samples`` asks
N_DIGITS = 1797


def load_dataset(name: str | None = None, path: str | os.PathLike | None = None, n_samples: int = 1000,
                 noise: float = 0.1, test_fraction: float = 0.2, seed: int = 0, task: str = "auto",
                 n_classes: int | None = None, standardize: bool = True) -> Dataset:
    """A built-in data set by ``name`` or a file by ``path``, shuffled and split; deterministic per seed.

    ``standardize``: files and the generated 2-D sets (:data:`STANDARDISE`) get each feature standardised with
    the training split's mean and standard deviation (a constant feature is only centred); False keeps the raw
    values.  The teacher and the digits are used as generated either way (already on a scale near 1).

    ``task`` (files only; ``auto`` infers it, see :func:`file_task`).  ``n_classes``: the class count of
    spirals and blobs; for a classification file, the number of classes its labels range over (default:
    the largest label + 1).  Class labels are used as given, never renumbered.
    """
    if (name is None) == (path is None):
        raise ValueError("give exactly one of a data set name or a file path")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    if name is not None:
        if name not in DATASETS:
            raise ValueError(f"unknown data set {name!r}; use one of {', '.join(DATASETS)}")
        kw = {"n_classes": n_classes} if n_classes is not None and name in CLASS_COUNT else {}
        if n_classes is not None and not kw:
            raise ValueError(f"{name} has a fixed number of classes; n_classes applies to "
                             f"{', '.join(sorted(CLASS_COUNT))} and data files")
        X, y = DATASETS[name](int(n_samples), float(noise), rng, **kw)
        label = name
        task = "regression" if name in REGRESSION else "classification"
        if task == "classification":
            n_classes = n_classes or SHAPES[name][1]  # the classes asked for, even if a tiny sample misses some
    else:
        p = Path(path)
        X, y, task, n_classes = _read_file(p, task, n_classes)
        label = p.stem
    # every source gives float64 X, and int64 labels or float64 targets
    if task == "regression":
        y = y[:, None] if y.ndim == 1 else y
        n_classes = 0
    order = rng.permutation(len(X))
    X, y = X[order], y[order]  # new arrays: standardised in place below
    n_test = int(round(test_fraction * len(X)))
    if len(X) - n_test < 1:
        raise ValueError(f"{label}: no training examples left after the test split")
    if standardize and (path is not None or name in STANDARDISE):
        _standardise(X, n_test, str(path) if path is not None else label)
    return Dataset(name=label, X_train=X[n_test:], y_train=y[n_test:], X_test=X[:n_test], y_test=y[:n_test],
                   task=task, n_classes=int(n_classes), n_features=int(X.shape[1]))


def _standardise(X: np.ndarray, n_test: int, label: str) -> None:
    """Standardise ``X`` in place with the statistics of its training rows (``X[n_test:]``).

    Finite values near the float64 limit (1e308) overflow in the mean and the variance; such columns are
    first divided by their largest magnitude (which leaves the standardised values the same), so the result
    is finite whenever the data is.  ValueError naming the data set if it still is not."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = X[n_test:].mean(0), X[n_test:].std(0)
    huge = ~(np.isfinite(mean) & np.isfinite(std))
    if huge.any():  # rare: only then is the rescaled path taken, so ordinary data is standardised as before
        scale = np.abs(X[:, huge]).max(0)
        scale[scale == 0] = 1.0
        X[:, huge] /= scale
        with np.errstate(over="ignore", invalid="ignore"):
            mean[huge], std[huge] = X[n_test:, huge].mean(0), X[n_test:, huge].std(0)
    std[std == 0] = 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        X -= mean
        X /= std
    if not np.isfinite(X).all():
        column = int(np.argwhere(~np.isfinite(X))[0][1])
        raise ValueError(f"{label}: column {column} of X cannot be standardised (its values overflow float64); "
                         f"rescale the data")
