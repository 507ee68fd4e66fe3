"""Findings, suggestions and the health report (JSON schema ``gradmon.report/1``).

These are plain data: detectors create :class:`Finding`, advice attaches :class:`Suggestion`, the monitor
assembles a :class:`HealthReport`, and the renderers in :mod:`gradmon.report` present it.  This module
never imports the presentation: :meth:`HealthReport.save` writes JSON itself and finds the other formats in
:data:`RENDERERS`, which :mod:`gradmon.report` fills when it is imported (``import gradmon`` does).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from core.files import atomic_write_text, nesting_depth, read_bounded_text
from core.tune import json_safe
from gradmon import diagnosis
from gradmon.vocabulary import STATUSES, severity_rank

SCHEMA = "gradmon.report/1"
#: the largest report.json read, and how deeply its objects and lists may nest
LOAD_LIMIT = 256 * 2**20
MAX_DEPTH = 32

#: Finding codes of the contract, with a one-line meaning (used in reports and errors).
FINDING_CODES: dict[str, str] = {
    "vanishing_gradients": "gradients shrink towards the input layers until early layers stop learning",
    "exploding_gradients": "gradient norms grow large or spike, so updates overshoot",
    "nonfinite_values": "NaN or Inf in the loss, gradients or activations",
    "saturated_activations": "sigmoid or tanh units pinned near their asymptotes",
    "dead_units": "ReLU units that output zero for every example of a batch",
    "sharpness_above_stability": "top Hessian eigenvalue above 2/lr, where gradient descent cannot be stable",
    "loss_divergence": "the loss grows instead of falling",
    "loss_oscillation": "the loss swings up and down instead of falling",
    "loss_plateau": "the loss stopped improving while it is still high",
    "update_ratio": "updates far too small or too large for their weights",
    "unscaled_inputs": "input features whose scales differ by orders of magnitude or lie far from 1",
}

#: Suggestion codes of the contract.
SUGGESTION_CODES: tuple[str, ...] = (
    "relu", "leaky_relu", "he_init", "xavier_init", "batchnorm", "gradient_clipping", "lower_lr",
    "raise_lr", "adam", "shallower", "l2", "zero_bias", "standardize",
)

def _clean(value: Any) -> Any:
    """JSON-safe copy (:func:`core.tune.json_safe`): numpy scalars and arrays to Python, non-finite floats
    (NaN, ±Inf) to ``None``.

    JSON has no NaN or Infinity, so a value that does not apply (saturation of a ReLU layer) or is not
    finite (the loss of a diverged run) is written as ``null``.
    """
    return json_safe(value)


@dataclass
class Suggestion:
    """A fix: a contract code, a sentence, and a spec patch that applies it."""

    code: str
    text: str
    patch: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.code not in SUGGESTION_CODES:
            raise ValueError(f"unknown suggestion code {self.code!r}; use one of {', '.join(SUGGESTION_CODES)}")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "text": self.text, "patch": _clean(self.patch)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Suggestion":
        return cls(code=d["code"], text=d.get("text", ""), patch=dict(d.get("patch") or {}))


@dataclass
class Finding:
    """One judged problem, located by layer (or ``None`` for the whole model) and by step range."""

    code: str
    severity: str
    layer: str | None
    first_step: int
    last_step: int
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    suggestions: list[Suggestion] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.code not in FINDING_CODES:
            raise ValueError(f"unknown finding code {self.code!r}; use one of {', '.join(FINDING_CODES)}")
        severity_rank(self.severity)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.code, self.layer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code, "severity": self.severity, "layer": self.layer,
            "first_step": int(self.first_step), "last_step": int(self.last_step),
            "message": self.message, "evidence": _clean(self.evidence),
            "suggestions": [s.to_dict() for s in self.suggestions],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Finding":
        return cls(code=d["code"], severity=d["severity"], layer=d.get("layer"),
                   first_step=int(d["first_step"]), last_step=int(d["last_step"]),
                   message=d.get("message", ""), evidence=dict(d.get("evidence") or {}),
                   suggestions=[Suggestion.from_dict(s) for s in d.get("suggestions") or []])


def status_of(findings: list[Finding]) -> str:
    """``error`` if any error finding, ``warning`` if any warning, else ``healthy`` (info never counts)."""
    worst = max((severity_rank(f.severity) for f in findings), default=0)
    return STATUSES[worst]


@dataclass
class HealthReport:
    """The report of one run; ``to_dict()`` is exactly the ``gradmon.report/1`` schema.

    ``layers`` holds per-layer summaries ``{"name", "grad_norm": {"first", "last", "median"}, ...}``;
    ``curvature`` one dict per measurement (``step``, ``lambda_max``, ``trace``, ``hvps``...); ``loss`` one
    dict per recorded step (``step``, ``train``).  ``ended`` says why the run stopped (``completed``,
    ``nonfinite``, ``interrupted``, ``exception: ...``); ``extra`` carries optional sections such as the
    doctor's trials.

    In memory a value that does not apply is NaN; ``to_dict()`` writes it (and any other non-finite
    number) as ``null``, which :meth:`from_dict` reads back as ``None``.
    """

    spec: dict[str, Any]
    steps: int
    findings: list[Finding]
    layers: list[dict[str, Any]] = field(default_factory=list)
    curvature: list[dict[str, Any]] = field(default_factory=list)
    loss: list[dict[str, Any]] = field(default_factory=list)
    ended: str = "completed"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return status_of(self.findings)

    @property
    def root_cause(self) -> Finding | None:
        """The finding that explains the others (:func:`gradmon.diagnosis.primary`; None when healthy)."""
        return diagnosis.primary(self.findings)

    @property
    def primary_fix(self) -> Suggestion | None:
        """The one fix to try first: the root cause's first suggestion."""
        return diagnosis.primary_fix(self.findings)

    def __repr__(self) -> str:
        """One line: status, steps, how it ended and the findings (code, severity, layer)."""
        found = ", ".join(f"{f.code}({f.severity}{', ' + f.layer if f.layer else ''})" for f in self.worst("info"))
        return (f"<HealthReport {self.status}: {self.steps} steps, {self.ended}; {len(self.findings)} findings"
                + (f": {found}" if found else "") + ">")

    def _repr_html_(self) -> str:
        """The report's top for notebooks (Jupyter calls this): status and findings with their first fix."""
        render = FRAGMENTS.get("html")
        if render is None:  # the presentation layer was not imported
            from html import escape

            return f"<pre>{escape(repr(self))}</pre>"
        return render(self)

    def worst(self, at_least: str = "info") -> list[Finding]:
        """Findings of severity ``at_least`` or worse, errors first."""
        floor = severity_rank(at_least)
        chosen = [f for f in self.findings if severity_rank(f.severity) >= floor]
        return sorted(chosen, key=lambda f: (-severity_rank(f.severity), f.first_step))

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema": SCHEMA,
            "spec": _clean(self.spec),
            "status": self.status,
            "steps": int(self.steps),
            "findings": [f.to_dict() for f in self.findings],
            "layers": _clean(self.layers),
            "curvature": _clean(self.curvature),
            "loss": _clean(self.loss),
            "ended": self.ended,
            "diagnosis": _clean(diagnosis.summary(self.findings)),
        }
        if self.extra:
            out["extra"] = _clean(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HealthReport":
        """Read the ``gradmon.report/1`` dict; ValueError naming what is malformed."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a report must be a JSON object, got a {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not a gradmon report: schema is {d.get('schema')!r}, expected {SCHEMA!r}")
        for key, kind in (("findings", list), ("layers", list), ("curvature", list), ("loss", list),
                          ("spec", Mapping), ("extra", Mapping)):
            if d.get(key) is not None and not isinstance(d[key], kind):
                raise ValueError(f"report field {key!r} must be a {'list' if kind is list else 'object'}, "
                                 f"got {type(d[key]).__name__}")
        findings = []
        for i, f in enumerate(d.get("findings") or []):
            if not isinstance(f, Mapping):
                raise ValueError(f"finding {i} must be an object, got {type(f).__name__}")
            missing = [k for k in ("code", "severity", "first_step", "last_step") if k not in f]
            if missing:
                raise ValueError(f"finding {i} has no {', '.join(repr(k) for k in missing)}")
            try:
                findings.append(Finding.from_dict(f))
            except (TypeError, ValueError, KeyError) as exc:
                raise ValueError(f"finding {i}: {exc}") from None
        return cls(spec=dict(d.get("spec") or {}), steps=int(d.get("steps", 0)),
                   findings=findings,
                   layers=_entries(d.get("layers"), "layers"), curvature=_entries(d.get("curvature"), "curvature"),
                   loss=_entries(d.get("loss"), "loss"),
                   ended=d.get("ended", "completed"),
                   extra=dict(d.get("extra") or {}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HealthReport":
        """Read a ``report.json`` (or the ``report.json`` inside a run directory)."""
        p = Path(path)
        if p.is_dir():
            p = p / "report.json"
        if not p.exists():
            raise FileNotFoundError(f"no report at {p}: run `gradmon run SPEC --logdir DIR` first")
        text = read_bounded_text(p, LOAD_LIMIT, "report")  # a regular file, bounded: never a FIFO or /dev/zero
        try:
            data = json.loads(text)
            deep = nesting_depth(data, MAX_DEPTH) > MAX_DEPTH
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except RecursionError:
            deep = True
        if deep:
            raise ValueError(f"{p}: nested too deeply for a gradmon report (at most {MAX_DEPTH} levels)")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{p}: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, path: str | os.PathLike, history: Any = None) -> Path:
        """Write the report; the format follows the suffix (:data:`RENDERERS`: ``.json``, ``.md``, ``.html``).

        ``history`` (a :class:`gradmon.history.History`) adds the per-step plots to HTML and Markdown.
        The file is written atomically (temp file + rename), so a reader never sees half a report.
        """
        p = Path(path)
        render = RENDERERS.get(p.suffix.lower())
        if render is None:
            raise ValueError(f"cannot tell the report format from {p.name!r}: use a "
                             f"{', '.join(sorted(RENDERERS))} suffix")
        atomic_write_text(p, render(self, history))
        return p


def _entries(entries: Any, key: str) -> list[dict[str, Any]]:
    """A report's list of records (``layers``, ``curvature``, ``loss``): each must be an object."""
    out = []
    for i, e in enumerate(entries or []):
        if not isinstance(e, Mapping):
            raise ValueError(f"report field {key!r}: entry {i} must be an object, got {type(e).__name__}")
        out.append(dict(e))
    return out


#: Report formats by file suffix: ``render(report, history) -> text``.  JSON is built in; the presentation
#: layer (:mod:`gradmon.report`) adds Markdown and HTML when it is imported.
RENDERERS: dict[str, Callable[[HealthReport, Any], str]] = {".json": lambda report, history: report.to_json()}
#: Compact renderings for interactive display (``"html"``: :meth:`HealthReport._repr_html_`), filled by
#: :mod:`gradmon.report` like :data:`RENDERERS`.
FRAGMENTS: dict[str, Callable[[HealthReport], str]] = {}
