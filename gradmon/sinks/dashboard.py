"""What gradmon's TensorBoard dashboard shows, as data: tag names, tag descriptions, the custom-scalars
layout, the diagnosis text and the HPARAMS protobufs.  Pure functions; :mod:`gradmon.sinks.tensorboard`
writes what they build.

- **Tags sort in depth order**: a per-layer series is ``<quantity>/<NN>_<layer>`` with the unit's index
  zero-padded (``grad_norm/03_dense6``), so TensorBoard's lists and tooltips read input to output.
- **The custom-scalars layout lands on the diagnosis**: its first category has one chart per warning or
  error finding, titled with the finding, the layer and the fix; then the per-layer charts (log scale
  first), then the run-wide ones.  Charts whose series are all empty or constant are left out.  Custom
  scalars match tags as regular expressions, so every tag is anchored (``^grad_norm/03_dense6$``).
- **HPARAMS**: the experiment lists only the hyperparameters asked for (those that differ between the runs
  compared, or from the defaults) and the final metrics with their meaning.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from gradmon import diagnosis
from gradmon.findings import Finding, HealthReport
from gradmon.layout import Unit
from gradmon.report.markdown import md_code, md_text
from gradmon.report.text import location, patch_to_cli
from gradmon.vocabulary import RELU_FAMILY, SATURATING, SEVERITIES, counts_phrase, severity_counts, severity_rank

#: per-layer quantities written as scalars, in the order of their charts (log scale first)
LAYER_QUANTITIES = ("log10_grad_norm", "log10_act_std", "grad_norm", "log10_update_ratio", "update_ratio",
                    "saturation", "dead_fraction", "weight_norm")

#: a one-line meaning of every scalar tag prefix (TensorBoard shows it beside the chart)
DESCRIPTIONS: dict[str, str] = {
    "log10_grad_norm": "log10 of the layer's gradient norm (before clipping). Layers far below the others "
                       "(a decade or more) learn slowly: vanishing gradients. Series sort input to output.",
    "grad_norm": "L2 norm of the layer's gradient (before clipping), per step. Series sort input to output.",
    "log10_act_std": "log10 of the standard deviation of the layer's activations. Falling with depth (decades "
                     "from the first layer to the last): the signal dies in the forward pass.",
    "log10_update_ratio": "log10 of ||update|| / ||weights|| per layer. Around -3 is typical for SGD; below "
                          "-5 the layer barely moves, above -1 the step rewrites it.",
    "update_ratio": "||update|| / ||weights|| of the layer's weights, per step.",
    "saturation": "fraction of the layer's sigmoid/tanh outputs pinned near their asymptotes (gradient ~0).",
    "dead_fraction": "fraction of the layer's ReLU units that output zero for every example of the batch.",
    "weight_norm": "L2 norm of the layer's weights.",
    "loss": "training loss per recorded step (train), per epoch (train_epoch) and on held-out data (val).",
    "accuracy": "accuracy per epoch on the training (train) and held-out (val) data.",
    "log10_grad_norm/global": "log10 of the global gradient norm (all parameters, before clipping).",
    "grad_norm/global": "global gradient norm over all parameters, before clipping.",
    "clip_coef": "global norm after clipping / before clipping (1 = no clipping happened).",
    "lr": "learning rate of the step.",
    "curvature": "top Hessian eigenvalue (lambda_max, Lanczos), its 2/lr stability threshold, the Hessian "
                 "trace (exact where the model allows, else deflated Hutchinson) with its standard error "
                 "(trace_stderr), and the Hessian-vector products used.",
    "metrics": "final metrics of the run (HPARAMS): losses, accuracy, status 0 healthy / 1 warning / 2 error.",
}


#: the series that show each finding (``{layers}`` = one anchored tag per unit; ``{layer}`` = its unit)
FINDING_CHARTS: dict[str, tuple[str, ...]] = {
    "vanishing_gradients": ("log10_grad_norm/{layers}",),
    "exploding_gradients": ("log10_grad_norm/global", "log10_grad_norm/{layers}"),
    "nonfinite_values": ("loss/train", "log10_grad_norm/global"),
    "saturated_activations": ("saturation/{layers}",),
    "dead_units": ("dead_fraction/{layers}",),
    "sharpness_above_stability": ("curvature/lambda_max", "curvature/stability_threshold"),
    "loss_divergence": ("loss/train", "loss/val"),
    "loss_oscillation": ("loss/train", "loss/val"),
    "loss_plateau": ("loss/train", "loss/val"),
    "update_ratio": ("log10_update_ratio/{layers}",),
}

#: status as a number for HPARAMS (severity rank: 0 healthy, 1 warning, 2 error)
STATUS_VALUES = {"healthy": 0, "warning": 1, "error": 2}


def index_width(n_units: int) -> int:
    """Digits of the zero-padded unit index (at least two: ``00`` .. ``99``)."""
    return max(2, len(str(max(n_units - 1, 0))))


def unit_label(unit: Unit, width: int) -> str:
    """``03_dense6``: the unit's depth index, zero-padded, and its name."""
    return f"{unit.index:0{width}d}_{unit.name}"


def layer_tag(quantity: str, unit: Unit, width: int) -> str:
    """The scalar/histogram tag of ``quantity`` for ``unit``: ``grad_norm/03_dense6``."""
    return f"{quantity}/{unit_label(unit, width)}"


def description(tag: str) -> str:
    """The meaning of ``tag`` (the tag itself, else its first part), or ``""``."""
    if tag in DESCRIPTIONS:
        return DESCRIPTIONS[tag]
    if tag in METRIC_MEANING:
        return METRIC_MEANING[tag]
    head = tag.split("/", 1)[0]
    return DESCRIPTIONS.get(head, "")


def applies(quantity: str, unit: Unit) -> bool:
    """Whether a per-layer ``quantity`` can have a value for ``unit`` (saturation needs a saturating
    activation, dead fractions a rectifier; the rest applies to every unit)."""
    if quantity == "saturation":
        return unit.activation in SATURATING
    if quantity == "dead_fraction":
        return unit.activation in RELU_FAMILY
    if quantity == "act_std":
        return unit.activation is not None
    return True


def anchored(tag: str) -> str:
    """A custom-scalars tag pattern that matches exactly ``tag`` (the plugin reads patterns as regexes)."""
    return f"^{re.escape(tag)}$"


def finding_title(f: Finding, width: int, units: Sequence[Unit]) -> str:
    """``ERROR vanishing_gradients in 00_dense0 — fix: --set model.activation=relu ...``."""
    labels = {u.name: unit_label(u, width) for u in units}
    kind, text = location(f)
    place = "model-wide" if kind == "model" else f"in {labels.get(text, text)}"
    fix = ""
    if f.suggestions:
        s = f.suggestions[0]
        fix = f" — fix: {patch_to_cli(s.patch) if s.patch else s.text}"
    return f"{f.severity.upper()} {f.code} {place}, step {f.first_step}{fix}"


def finding_tags(f: Finding, units: Sequence[Unit], width: int, shown: set[str] | None) -> list[str]:
    """The tags of the chart that shows finding ``f``: the sick layer first, then the others in depth order
    (only tags in ``shown`` when given)."""
    tags: list[str] = []
    for pattern in FINDING_CHARTS.get(f.code, ("loss/train",)):
        if pattern.endswith("/{layers}"):
            quantity = pattern.split("/", 1)[0]
            ordered = sorted(units, key=lambda u: (u.name != f.layer, u.index))
            tags += [layer_tag(quantity, u, width) for u in ordered if applies(quantity.replace("log10_", ""), u)]
        else:
            tags.append(pattern)
    return [t for t in tags if shown is None or t in shown]


def layout(units: Sequence[Unit], findings: Iterable[Finding], shown: set[str] | None = None) -> Any:
    """The custom-scalars :class:`Layout` protobuf: a *diagnosis* category (one chart per warning or error
    finding, worst first), *layers, input → output* (per-layer quantities, log scale first) and *run*
    (loss, global gradient, learning rate, curvature).  ``shown``: the tags that have informative data (not
    empty, not constant); None before any data, when every chart that can apply is kept."""
    from tensorboardX.proto.layout_pb2 import Category, Chart, Layout, MultilineChartContent

    width = index_width(len(units))

    def chart(title: str, tags: Sequence[str]) -> Any:
        return Chart(title=title, multiline=MultilineChartContent(tag=[anchored(t) for t in tags]))

    def keep(tags: Sequence[str]) -> list[str]:
        return [t for t in tags if shown is None or t in shown]

    findings = list(findings)
    root = diagnosis.primary(findings)  # the root cause's chart first
    worst = sorted((f for f in findings if f.severity in ("warning", "error") or f is root),
                   key=lambda f: (f is not root, -severity_rank(f.severity), f.first_step))
    charts, shown_codes = [], set()
    for f in worst:
        if diagnosis.cause_of(f) is not None and f.code in shown_codes:
            continue  # consequences of one kind share a chart: the cause's is the one to read
        shown_codes.add(f.code)
        tags = finding_tags(f, units, width, shown)
        if tags:
            charts.append(chart(finding_title(f, width, units), tags))
    per_layer = []
    for q in LAYER_QUANTITIES:
        base = q.replace("log10_", "")
        tags = keep([layer_tag(q, u, width) for u in units if applies(base, u)])
        if tags:
            per_layer.append(chart(f"{q} per layer (input → output)", tags))
    run = []
    for title, tags in (("loss", ("loss/train", "loss/train_epoch", "loss/val")),
                        ("accuracy", ("accuracy/train", "accuracy/val")),
                        ("log10 global gradient norm", ("log10_grad_norm/global",)),
                        ("global gradient norm and clip coefficient", ("grad_norm/global", "clip_coef")),
                        ("learning rate", ("lr",)),
                        ("curvature: lambda_max vs 2/lr", ("curvature/lambda_max", "curvature/stability_threshold")),
                        ("curvature: Hessian trace ± 1 s.e.", ("curvature/trace", "curvature/trace_stderr"))):
        kept = keep(tags)
        if kept:
            run.append(chart(title, kept))
    categories = []
    if charts:
        grave = any(f.severity == "error" for f in worst)
        categories.append(Category(title="diagnosis: " + ("errors" if grave else "warnings")
                                   + " and the layers they concern, root cause first", chart=charts, closed=False))
    categories.append(Category(title="layers, input → output", chart=per_layer, closed=False))
    categories.append(Category(title="run", chart=run, closed=False))
    return Layout(category=categories)


def alert_markdown(f: Finding, width: int, units: Sequence[Unit], suffix: str = "") -> str:
    """One finding as Markdown (names and the message escaped): the line and its fix."""
    labels = {u.name: unit_label(u, width) for u in units}
    where_text = f" in {md_code(labels.get(f.layer, f.layer))}" if f.layer else ""
    label = f.severity.upper() if f.severity in SEVERITIES else md_text(f.severity.upper())
    cause = diagnosis.cause_of(f)
    because = f" (a consequence of {md_code(diagnosis.name(*cause))})" if cause else ""
    line = (f"**{label}** {md_code(f.code)}{where_text}{because} at step {f.first_step}: "
            f"{md_text(f.message + suffix)}")
    for s in f.suggestions[:2]:
        line += f"  \n&nbsp;&nbsp;fix: {md_text(s.text)}" + (f" ({md_code(patch_to_cli(s.patch))})" if s.patch else "")
    return line


def diagnosis_markdown(report: HealthReport, units: Sequence[Unit], dropped: Sequence[str] = ()) -> str:
    """The run's diagnosis for the TEXT tab: status, every finding worst first with its fixes, and which
    series were not charted because they never changed."""
    width = index_width(len(units))
    counts = counts_phrase(severity_counts(f.severity for f in report.findings))
    lines = [f"## gradmon diagnosis: {report.status.upper()} after {report.steps} steps ({md_text(report.ended)})",
             (f"{counts}; worst first, each with its fix. Charts: CUSTOM SCALARS, category *diagnosis*."
              if counts else "No findings."), ""]
    root, fix = report.root_cause, report.primary_fix
    if root is not None:
        lines += [f"**Root cause:** {md_code(diagnosis.name(root.code, root.layer))}"
                  + (f"; **first fix:** {md_text(fix.text)}" + (f" ({md_code(patch_to_cli(fix.patch))})"
                                                               if fix.patch else "") if fix is not None else ""), ""]
    for f in report.worst("info"):
        lines += [f"- {alert_markdown(f, width, units)}"]
    if not report.findings:
        lines.append("Nothing to report: no detector fired.")
    if dropped:
        lines += ["", "Not charted (the same value at every recorded step): "
                  + ", ".join(md_code(t) for t in dropped[:40]) + (" ..." if len(dropped) > 40 else "")]
    return "\n".join(lines)


def experiment_summary(hparams: Mapping[str, Any], metrics: Sequence[str]) -> Any:
    """The HPARAMS experiment (columns): ``hparams`` by name with their type (strings and booleans as
    discrete domains of the values given), ``metrics`` with their meaning."""
    from tensorboardX.proto.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName
    from google.protobuf.struct_pb2 import ListValue, Value

    infos = []
    for name, value in hparams.items():
        if isinstance(value, bool):
            infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_BOOL"),
                                    domain_discrete=ListValue(values=[Value(bool_value=False), Value(bool_value=True)])))
        elif isinstance(value, (int, float)):
            infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_FLOAT64")))
        else:
            infos.append(HParamInfo(name=name, type=DataType.Value("DATA_TYPE_STRING")))
    mts = [MetricInfo(name=MetricName(tag=m), display_name=m.split("/", 1)[-1], description=METRIC_MEANING.get(m, ""))
           for m in metrics]
    return _hparams_summary("_hparams_/experiment", experiment=Experiment(hparam_infos=infos, metric_infos=mts))


#: the final metrics a run logs for HPARAMS, with their meaning
METRIC_MEANING: dict[str, str] = {
    "metrics/val_loss": "loss on the held-out data at the end",
    "metrics/accuracy": "accuracy at the end (held-out data when there is some, else training)",
    "metrics/train_loss": "last training loss",
    "metrics/status": "0 healthy, 1 warning, 2 error",
    "metrics/findings": "warning and error findings",
    "metrics/steps": "steps trained",
}


def session_summaries(hparams: Mapping[str, Any], ended: str) -> tuple[Any, Any]:
    """The session start (every hyperparameter's value) and end (success, or failure when the run did not
    complete) summaries of one run."""
    from tensorboardX.proto.api_pb2 import Status
    from tensorboardX.proto.plugin_hparams_pb2 import SessionEndInfo, SessionStartInfo

    start = SessionStartInfo()
    for k, v in hparams.items():
        if isinstance(v, bool):
            start.hparams[k].bool_value = v
        elif isinstance(v, (int, float)):
            start.hparams[k].number_value = float(v)
        elif v is not None:
            start.hparams[k].string_value = str(v)
    status = "STATUS_SUCCESS" if ended == "completed" else "STATUS_FAILURE"
    return (_hparams_summary("_hparams_/session_start_info", session_start_info=start),
            _hparams_summary("_hparams_/session_end_info", session_end_info=SessionEndInfo(status=Status.Value(status))))


def _hparams_summary(tag: str, **content: Any) -> Any:
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    data = HParamsPluginData(version=0, **content)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams",
                                                                  content=data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def flat_hparams(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Flat scalar hyperparameters of a spec (``model.activation``...; lists as text)."""
    out: dict[str, Any] = {}
    for section in ("model", "train", "data"):
        for key, value in dict(spec.get(section, {})).items():
            if isinstance(value, (bool, int, float, str)):
                out[f"{section}.{key}"] = value
            elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
                out[f"{section}.{key}"] = str(list(value))
    return out
