"""The run spec: TOML, JSON or a dict -> data, model and trainer.

>>> spec = load_spec({"model": {"hidden": [32]}}, ["train.lr=0.05"])
>>> spec["train"]["lr"], spec["model"]["activation"]
(0.05, 'relu')

Every key is validated at the boundary; a bad spec raises :class:`SpecError` with one line naming the key.
A key that would have no effect is an error, not silently ignored: ``train.momentum`` and
``train.nesterov`` apply to the ``sgd`` and ``momentum`` optimizers only (``momentum`` defaults to 0.9 for
``momentum``, 0 for ``sgd``); ``data.n_classes`` to spirals, blobs and classification files.  Setting
``train.optimizer`` (in a spec file, ``--set`` or a patch) resets ``train.momentum``/``train.nesterov``
unless they are set alongside; setting ``data.name`` clears ``data.path`` and the other way round (and
resets ``data.task``).
``data.standardize`` (default true) standardises each feature of a data file and of the generated 2-D sets with
the training split's mean and standard deviation; false keeps the raw values (to reproduce and diagnose raw
data: gradmon's ``unscaled_inputs`` finding).
``data.task`` (``auto``, ``classification``, ``regression``) says what a file's targets are; ``auto``
follows an explicit ``train.loss`` (mse: regression), else reads whole-number targets as class labels
(kept as given: labels 0..max, never renumbered).  A relative ``data.path`` in a spec file is relative to
that file's directory (on the command line, to the working directory).  Sizes are checked against
:data:`MEMORY_LIMIT` before anything is allocated, the number of optimizer steps against :data:`MAX_STEPS`;
a spec file is read only when it is a regular file of at most :data:`SPEC_LIMIT` bytes, nesting at most
:data:`MAX_DEPTH` deep.

``monitor.thresholds`` overrides the monitor's judging numbers: a table of tables of numbers, set whole
(``[monitor.thresholds.vanishing_gradients]`` in TOML) or one number at a time
(``--set monitor.thresholds.vanishing_gradients.min_drop=3``).  core checks only that shape and that the
values are finite numbers; the table and field names are gradmon's (``gradmon.thresholds``), checked when
its monitor is built.  ``monitor.tensorboard_every`` (records between TensorBoard scalar writes, default 10)
and ``monitor.histogram_every`` (steps between histograms; 0 = none; absent = about 20 per run) set the
TensorBoard cadence.

(A little over 450 lines: the whole boundary of a spec, reading, merging and every key's rule, is kept in one
place.)
"""

from __future__ import annotations

import copy
import difflib
import json
import numbers
import os
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from core import checks
from core.files import nesting_depth, read_bounded_text
from core.memory import MemoryLimitError
from core.memory import check_memory as _check_memory


class SpecError(ValueError):
    """A bad run spec; the message is one line that names the key or file."""


def check_memory(spec: Mapping[str, Any], n_samples: int, n_features: int, n_outputs: int) -> None:
    """:func:`core.memory.check_memory`, its refusal as a :class:`SpecError`."""
    try:
        _check_memory(spec, n_samples, n_features, n_outputs)
    except MemoryLimitError as exc:
        raise SpecError(str(exc)) from None


DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "data": {"name": "spirals", "path": None, "n_samples": 1000, "noise": 0.1, "test_fraction": 0.2,
             "n_classes": None, "task": "auto", "standardize": True},
    "model": {"hidden": [64, 64], "activation": "relu", "init": "he_normal", "init_std": 0.05, "init_limit": 0.05,
              "bias_init": 0.0, "batchnorm": False, "dropout": 0.0, "leaky_alpha": 0.01},
    "train": {"loss": "auto", "optimizer": "sgd", "lr": 0.1, "momentum": None, "nesterov": False, "batch_size": 32,
              "epochs": 20, "clip_norm": 0.0, "clip_value": 0.0, "l2": 0.0},
    # curvature_every None: the steps follow curvature_budget (a share of wall time); an integer wins (0: off)
    "monitor": {"every": 1, "curvature_every": None, "curvature_budget": 0.05, "curvature_samples": 1024,
                "thresholds": {}, "tensorboard_every": 10, "histogram_every": None},
}
SECTIONS = ("data", "model", "train", "monitor")
#: the largest spec file read
SPEC_LIMIT = 2**20
#: how deeply a spec's tables and lists may nest (``monitor.thresholds.<table>.<name>`` is 4)
MAX_DEPTH = 16
#: the most optimizer steps a spec may ask for (epochs × steps per epoch): a typo such as ``epochs = 1e12``
#: is refused at once instead of running for centuries
MAX_STEPS = 10**9
#: optimizers that take train.momentum and train.nesterov
MOMENTUM_OPTIMIZERS = ("sgd", "momentum")


# -- value checks (each returns the cleaned value or raises SpecError naming the key) ----------------------------
def _as_spec(rule: Callable[[str, Any], Any], key: str, v: Any) -> Any:
    """``rule(key, v)`` (a :mod:`core.checks` rule) with its error as a SpecError: ``key: expected ...``."""
    try:
        return rule(key, v)
    except checks.CheckError as exc:
        raise SpecError(f"{key}: expected {exc.accepts}, got {v!r}") from None


def _number(key: str, v: Any) -> float:
    return _as_spec(checks.number, key, v)


def _ranged(rule: Callable[[str, Any], float]) -> Callable[[str, Any], float]:
    """A range rule that first says "expected a number" for a bool or a string."""
    def check(key: str, v: Any) -> float:
        _number(key, v)
        return _as_spec(rule, key, v)
    return check


_positive = _ranged(checks.positive)
_nonneg = _ranged(checks.nonnegative)
_unit = _ranged(checks.unit)


def _int(key: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise SpecError(f"{key}: expected an integer, got {v!r}")
    if v < low:
        raise SpecError(f"{key}: expected an integer >= {low}, got {v}")
    return int(v)


def _bool(key: str, v: Any) -> bool:
    return _as_spec(checks.flag, key, v)


def _string(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise SpecError(f"{key}: expected a non-empty string, got {v!r}")
    return v


def _choice(options: Callable[[], Iterable[str]]) -> Callable[[str, Any], str]:
    def check(key: str, v: Any) -> str:
        valid = list(options())
        if v not in valid:
            hint = difflib.get_close_matches(str(v), valid, n=1)
            raise SpecError(f"{key}: unknown value {v!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                            + f"; use one of {', '.join(valid)}")
        return v
    return check


def _hidden(key: str, v: Any) -> list[int]:
    if not isinstance(v, list):
        raise SpecError(f"{key}: expected a list of layer widths like [64, 64], got {v!r}")
    return [_int(f"{key}[{i}]", h, 1) for i, h in enumerate(v)]


def _batch(key: str, v: Any) -> int | str:
    if v == "full":
        return v
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SpecError(f"{key}: expected a positive integer or \"full\", got {v!r}")
    return v


def _thresholds(key: str, v: Any) -> dict[str, dict[str, int | float]]:
    """``{table: {name: number}}`` (a copy; integers stay integers: some thresholds are counts)."""
    if not isinstance(v, Mapping):
        raise SpecError(f"{key}: expected a table of threshold tables like "
                        f"{{vanishing_gradients = {{min_drop = 3.0}}}}, got {v!r}")
    out: dict[str, dict[str, int | float]] = {}
    for table, values in v.items():
        if not isinstance(values, Mapping):
            raise SpecError(f"{key}.{table}: expected a table of numbers like {{min_drop = 3.0}}, got {values!r}")
        clean: dict[str, int | float] = {}
        for name, x in values.items():
            number = _number(f"{key}.{table}.{name}", x)
            clean[str(name)] = int(x) if isinstance(x, numbers.Integral) else number
        out[str(table)] = clean
    return out


def _budget(key: str, v: Any) -> float:
    value = _number(key, v)
    if not 0 <= value < 1:
        raise SpecError(f"{key}: expected a share of wall time in [0, 1) such as 0.05 (0 turns curvature off), "
                        f"got {v!r}")
    return float(value)


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda key, v: None if v is None else check(key, v)


def _datasets() -> Iterable[str]:
    from core.data import DATASETS

    return DATASETS


def _activations() -> Iterable[str]:
    from core.activations import ACTIVATIONS

    return ACTIVATIONS


def _inits() -> Iterable[str]:
    from core.initializers import INITIALIZERS

    return INITIALIZERS


def _optimizers() -> Iterable[str]:
    from core.optimizers import OPTIMIZERS

    return OPTIMIZERS


def _losses() -> Iterable[str]:
    from core.losses import LOSSES

    return ["auto", *LOSSES]


CHECKS: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "": {"name": _string, "seed": lambda k, v: _int(k, v, 0)},
    "data": {"name": _optional(_choice(_datasets)), "path": _optional(_string),
             "n_samples": lambda k, v: _int(k, v, 2), "noise": _nonneg, "test_fraction": _unit,
             "n_classes": _optional(lambda k, v: _int(k, v, 2)),
             "task": _choice(lambda: ["auto", "classification", "regression"]), "standardize": _bool},
    "model": {"hidden": _hidden, "activation": _choice(_activations), "init": _choice(_inits),
              "init_std": _positive, "init_limit": _positive, "bias_init": _number, "batchnorm": _bool,
              "dropout": _unit, "leaky_alpha": _unit},
    "train": {"loss": _choice(_losses), "optimizer": _choice(_optimizers), "lr": _positive,
              "momentum": _optional(_unit),
              "nesterov": _bool, "batch_size": _batch, "epochs": lambda k, v: _int(k, v, 1), "clip_norm": _nonneg,
              "clip_value": _nonneg, "l2": _nonneg},
    "monitor": {"every": lambda k, v: _int(k, v, 1), "curvature_every": _optional(lambda k, v: _int(k, v, 0)),
                "curvature_budget": _budget, "curvature_samples": lambda k, v: _int(k, v, 1),
                "thresholds": _thresholds, "tensorboard_every": lambda k, v: _int(k, v, 1),
                "histogram_every": _optional(lambda k, v: _int(k, v, 0))},
}


def _all_keys() -> list[str]:
    return [k for k in CHECKS[""]] + [f"{s}.{k}" for s in SECTIONS for k in CHECKS[s]]


def _unknown(key: str) -> SpecError:
    hint = difflib.get_close_matches(key, _all_keys(), n=1)
    return SpecError(f"unknown key {key}" + (f" (did you mean {hint[0]}?)" if hint else "")
                     + f"; spec sections are {', '.join(SECTIONS)}")


# -- reading ----------------------------------------------------------------------------------------------------
def spec_name(source: str | os.PathLike | Mapping[str, Any]) -> str:
    if isinstance(source, Mapping):
        return str(source.get("name") or "run")
    return Path(source).stem


def read_spec_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw dict of a ``.toml`` or ``.json`` spec file: a regular file of at most :data:`SPEC_LIMIT` bytes
    (UTF-8, a byte-order mark allowed) whose tables nest at most :data:`MAX_DEPTH` deep."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".json"):
        if not p.exists():
            raise SpecError(f"{p}: no such spec file")
        raise SpecError(f"{p}: unknown spec format {suffix!r}; use .toml or .json")
    try:
        text = read_bounded_text(p, SPEC_LIMIT, "spec file")
    except FileNotFoundError:
        raise SpecError(f"{p}: no such spec file") from None
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    try:
        data = _shallow(json.loads(text) if suffix == ".json" else tomllib.loads(text), str(p))
    except json.JSONDecodeError as exc:
        raise SpecError(f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{p}: invalid TOML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        data = _shallow(None, str(p), deep=True)
    if not isinstance(data, dict):
        raise SpecError(f"{p}: a spec must be a table/object at the top level")
    return data


def _shallow(value: Any, where: str, deep: bool = False) -> Any:
    """``value``, or SpecError when it nests more than :data:`MAX_DEPTH` deep (``deep``: the parser said so)."""
    if deep or nesting_depth(value, MAX_DEPTH) > MAX_DEPTH:
        raise SpecError(f"{where}: nested too deeply (a spec nests at most {MAX_DEPTH} levels)")
    return value


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.lr=0.5"`` -> ``("train.lr", 0.5)``; values are TOML values ([64, 64], true, "x"), or bare
    strings when they don't parse (``model.activation=tanh``)."""
    if "=" not in item:
        raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=0.05")
    key, text = item.split("=", 1)
    key, text = key.strip(), text.strip()
    if not key:
        raise SpecError(f"--set {item!r}: the key is empty")
    try:
        value = _shallow(tomllib.loads(f"v = {text}")["v"], f"--set {key}")
    except tomllib.TOMLDecodeError:
        value = text
    except RecursionError:
        value = _shallow(None, f"--set {key}", deep=True)
    return key, value


def _set(spec: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) == 1 and parts[0] in CHECKS[""]:
        spec[parts[0]] = value
        return
    if len(parts) in (3, 4) and parts[:2] == ["monitor", "thresholds"] and all(parts[2:]):
        _set_threshold(spec, parts[2:], value)
        return
    if len(parts) != 2 or parts[0] not in SECTIONS or parts[1] not in CHECKS[parts[0]]:
        raise _unknown(key)
    spec[parts[0]][parts[1]] = value


def _set_threshold(spec: dict[str, Any], names: list[str], value: Any) -> None:
    """``monitor.thresholds.<table> = value`` (one table) or ``monitor.thresholds.<table>.<name> = value``
    (one number), keeping the others; the tables are copied, never changed in place."""
    current = spec["monitor"].get("thresholds")
    tables: dict[str, Any] = _thresholds("monitor.thresholds", {} if current is None else current)
    if len(names) == 1:
        tables[names[0]] = value
    else:
        tables[names[0]] = {**tables.get(names[0], {}), names[1]: value}
    spec["monitor"]["thresholds"] = tables


def _set_keys(spec: dict[str, Any], items: Mapping[str, Any]) -> None:
    """Set dotted keys (``--set`` overrides or a patch) together with the keys that depend on them:
    a new ``train.optimizer`` resets ``train.momentum``/``train.nesterov`` unless ``items`` sets them;
    ``data.name`` clears ``data.path`` and the other way round, and either resets ``data.task``."""
    if "train.optimizer" in items and items["train.optimizer"] != spec["train"].get("optimizer"):
        for key in ("momentum", "nesterov"):
            if f"train.{key}" not in items:
                spec["train"][key] = DEFAULTS["train"][key]
    if "data.path" in items and "data.name" not in items:
        spec["data"]["name"] = None
    if "data.name" in items and "data.path" not in items:
        spec["data"]["path"] = None
    if ("data.name" in items or "data.path" in items) and "data.task" not in items:
        spec["data"]["task"] = DEFAULTS["data"]["task"]
    for key, value in items.items():
        _set(spec, key, value)


def _merge(base: dict[str, Any], raw: Mapping[str, Any]) -> None:
    """Set the keys of a raw spec (sections of keys) on ``base``, by the rules of :func:`_set_keys`."""
    items: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise SpecError(f"{key}: expected a table of keys, got {value!r}")
            for sub, v in value.items():
                items[f"{key}.{sub}"] = v
        else:
            items[str(key)] = value
    _set_keys(base, items)


def validate(spec: dict[str, Any]) -> dict[str, Any]:
    """Check and clean every key; cross-key rules too.  Returns the same dict."""
    for key, check in CHECKS[""].items():
        spec[key] = check(key, spec[key])
    for section in SECTIONS:
        for key, check in CHECKS[section].items():
            spec[section][key] = check(f"{section}.{key}", spec[section][key])
    data, model, train = spec["data"], spec["model"], spec["train"]
    if (data["name"] is None) == (data["path"] is None):
        raise SpecError("data: give exactly one of data.name (a built-in set) or data.path (a .npz/.csv file)")
    _check_task(data, train)
    _check_optimizer(train)
    if model["batchnorm"] and train["batch_size"] == 1:
        raise SpecError("train.batch_size: 1 (stochastic GD) cannot train with model.batchnorm = true (batch "
                        "statistics need 2 or more examples); use a batch_size >= 2 or model.batchnorm = false")
    if data["name"] is not None:
        from core.data import N_DIGITS, SHAPES

        n = min(data["n_samples"], N_DIGITS) if data["name"] == "digits" else data["n_samples"]
        n_features, n_outputs = SHAPES[data["name"]]
        check_memory(spec, n, n_features, data["n_classes"] or n_outputs)
        check_steps(spec, n - int(round(data["test_fraction"] * n)))
    else:  # the file's sizes are checked once it is read (build); the network alone can be checked now
        check_memory(spec, 0, 1, 1)
        check_steps(spec, 1)
    return spec


def check_steps(spec: Mapping[str, Any], n_train: int) -> None:
    """SpecError naming ``train.epochs`` when the run would take more than :data:`MAX_STEPS` optimizer steps
    (``epochs × ceil(n_train / batch_size)``; one step per epoch for full-batch training)."""
    train = spec["train"]
    batch = max(1, n_train) if train["batch_size"] == "full" else train["batch_size"]
    per_epoch = max(1, -(-max(1, n_train) // batch))
    total = train["epochs"] * per_epoch
    if total > MAX_STEPS:
        raise SpecError(f"train.epochs: {train['epochs']:,} epochs of {per_epoch:,} steps are {total:.3g} optimizer "
                        f"steps, over the limit of {MAX_STEPS:.0e}; use fewer epochs")


def resolved_task(data: Mapping[str, Any], train: Mapping[str, Any]) -> str:
    """The task a (validated) spec trains for: a built-in set's own; else ``data.task``; for ``auto``, the
    one an explicit ``train.loss`` implies (mse: regression); else ``auto`` (the file's targets decide)."""
    from core.data import REGRESSION

    name, task, loss = data["name"], data["task"], train["loss"]
    if name is not None:
        return "regression" if name in REGRESSION else "classification"
    if task == "auto" and loss != "auto":
        return "regression" if loss == "mse" else "classification"
    return task


def _check_task(data: dict[str, Any], train: dict[str, Any]) -> None:
    from core.data import CLASS_COUNT

    name, loss = data["name"], train["loss"]
    task = resolved_task(data, train)
    if name is not None:
        if data["task"] not in ("auto", task):
            raise SpecError(f"data.task: {name} is a {task} data set; remove data.task or use \"{task}\"")
        if data["n_classes"] is not None and name not in CLASS_COUNT:
            raise SpecError(f"data.n_classes: {name} has a fixed number of classes, so the key would be ignored; "
                            f"remove it (it applies to {', '.join(sorted(CLASS_COUNT))} and data files)")
    if task == "regression" and data["n_classes"] is not None:
        raise SpecError("data.n_classes: a regression task has no classes; remove the key")
    if task == "regression" and loss not in ("auto", "mse"):
        raise SpecError(f"train.loss: {loss} needs class labels, but the task is regression; use mse")
    if task == "classification" and loss == "mse":
        raise SpecError("train.loss: mse needs real-valued targets, but the task is classification; use "
                        "cross_entropy (or set data.task = \"regression\" for a file of real targets)")


def _check_optimizer(train: dict[str, Any]) -> None:
    opt = train["optimizer"]
    if opt not in MOMENTUM_OPTIMIZERS:
        for key, unset in (("momentum", None), ("nesterov", False)):
            if train[key] != unset:
                raise SpecError(f"train.{key}: the {opt} optimizer has no momentum, so the key would be ignored; "
                                f"remove it, or use train.optimizer = \"momentum\"")
        return
    if opt == "momentum" and train["momentum"] is None:
        train["momentum"] = 0.9
    if train["nesterov"] and not train["momentum"]:
        raise SpecError("train.nesterov: Nesterov needs momentum; set train.momentum > 0 (e.g. 0.9) or "
                        "train.nesterov = false")


def load_spec(source: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read, merge onto defaults, apply ``--set`` overrides and validate; returns the resolved spec."""
    if not isinstance(source, (Mapping, str, os.PathLike)):
        raise TypeError(f"a spec is a path to a .toml/.json file or a dict, got {type(source).__name__}")
    spec = copy.deepcopy(DEFAULTS)
    if isinstance(source, Mapping):
        raw = dict(_shallow(source, "the spec"))
        spec["name"] = spec_name(source)
    else:
        raw = read_spec_file(source)
        spec["name"] = spec_name(source)
    _merge(spec, raw)  # a data.path replaces the default data set
    path = spec["data"]["path"]
    if not isinstance(source, Mapping) and isinstance(path, str) and path and not Path(path).is_absolute():
        spec["data"]["path"] = str(Path(source).parent / path)  # relative to the spec file, not the cwd
    _set_keys(spec, dict(parse_override(item) for item in overrides))
    return validate(spec)


def apply_patch(spec: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A new validated spec with dotted ``patch`` keys set (the input is not modified)."""
    out = copy.deepcopy(dict(spec))
    for section in SECTIONS:
        out.setdefault(section, copy.deepcopy(DEFAULTS[section]))
    _set_keys(out, copy.deepcopy(dict(patch)))
    return validate(out)


def flatten(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys: ``{"train.lr": 0.1, ...}``."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, Mapping):
            for sub, v in value.items():
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out
