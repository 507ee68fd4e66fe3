"""Plots for the HTML report (matplotlib, Agg backend), returned as PNG bytes.

Each plot separates its numbers (functions tests can check) from the drawing.  Colours come from the
colour-blind-safe Okabe–Ito palette and the ``cividis`` map.  Every string that comes from a model or a
spec (layer names, the optimizer) is drawn literally: :func:`literal` keeps matplotlib from reading
``$...$`` as mathtext, and LaTeX rendering (``text.usetex``) is switched off while plotting.
(A little over 450 lines: every plot of the report, each a numbers function and a drawing.)
"""

from __future__ import annotations

import functools
import io
import math
from typing import Any, Callable, TypeVar

import numpy as np

from gradmon.report.text import entry
from gradmon.vocabulary import SEVERITIES, SEVERITY_COLOURS, STABILITY_BOUND_OPTIMIZERS, stability_formula, \
    stability_threshold

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

#: The heatmap's colour range in decades below the largest layer of each step.  Fixed, so two reports
#: (a run and its fix) use the same colour for the same value; anything further below is drawn as the floor.
HEATMAP_FLOOR = -6.0
#: Heatmap cells that are not a positive finite norm, with their colours and legend labels.
CELL_ZERO, CELL_NONFINITE, CELL_MISSING = 1, 2, 3
CELL_STYLE = {CELL_ZERO: ("#CC79A7", "exactly zero gradient"),
              CELL_NONFINITE: ("#D55E00", "NaN or Inf gradient"),
              CELL_MISSING: ("#ececec", "not measured")}
#: Line styles cycled with colours, so that more layers than colours stay distinguishable.
LINE_STYLES = ("-", "--", ":", "-.")

F = TypeVar("F", bound=Callable[..., Any])


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def literal(text: Any) -> str:
    """``text`` as matplotlib must receive it to draw it literally: every ``$`` escaped, so that
    ``fc$_1$`` is not typeset as a subscript and ``head$\\foo$`` does not fail to parse."""
    return str(text).replace("$", r"\$")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_text(fn: F) -> F:
    """Run a plotting function, drawing included, with LaTeX text rendering off (a user's matplotlibrc may
    turn it on; it would interpret ``_`` and ``\\`` in layer names).  Wrap the function that saves the
    figure, so that drawing happens inside it too."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.usetex": False}):
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _integer_steps(ax) -> None:
    """Step axes tick at whole steps (a run of 8 steps shows no 2.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def _number(value: Any) -> float:
    """A JSON value as a float: ``None`` (null) and anything that is not a number become NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# -- gradient heatmap ----------------------------------------------------------------------------------------
def normalised_log_grad(history) -> np.ndarray:
    """``log10(norm / max over layers at that step)``, shape ``(steps, layers)``: 0 for the layer with the
    largest gradient at each step, negative below it.  Healthy late training, where every norm is small,
    stays near 0; vanishing shows as a fall along depth.  NaN where a norm is missing or not positive."""
    norms = np.asarray(history.layer("grad_norm"), dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        clean = np.where(np.isfinite(norms) & (norms > 0), norms, np.nan)
        peak = np.nanmax(np.where(np.isnan(clean), -np.inf, clean), axis=1, keepdims=True)
        out = np.log10(clean / peak)
    out[~np.isfinite(out)] = np.nan
    return out


def nonfinite_steps(history) -> np.ndarray:
    """Per recorded step, whether training had gone non-finite there: the global gradient norm or the loss
    is ±Inf, or NaN in a run that records it (finite at other steps).  A series that is never finite was
    not recorded (a hand-written loop without a loss, say) and marks nothing."""
    bad = np.zeros(len(history.steps), dtype=bool)
    for series in (history.scalar("grad_norm"), history.scalar("loss")):
        values = np.asarray(series, dtype=float)
        bad |= np.isinf(values)
        if np.isfinite(values).any():
            bad |= np.isnan(values)
    return bad


def gradient_cells(history, steps_bad: np.ndarray | None = None) -> np.ndarray:
    """What each heatmap cell is, shape ``(steps, layers)``: 0 a positive finite norm (drawn by value),
    :data:`CELL_ZERO` a norm of exactly 0 (no gradient reaches the layer: dead units, say),
    :data:`CELL_NONFINITE` an infinite norm, or a NaN one at a :func:`nonfinite_steps` step,
    :data:`CELL_MISSING` any other NaN norm (not measured for that layer).  ``steps_bad`` is
    :func:`nonfinite_steps` of ``history`` when the caller has it already."""
    norms = np.asarray(history.layer("grad_norm"), dtype=float)
    if steps_bad is None:
        steps_bad = nonfinite_steps(history)
    cells = np.zeros(norms.shape, dtype=np.int8)
    cells[norms == 0] = CELL_ZERO
    cells[np.isinf(norms)] = CELL_NONFINITE
    nan = np.isnan(norms)
    cells[nan & steps_bad[:, None]] = CELL_NONFINITE
    cells[nan & ~steps_bad[:, None]] = CELL_MISSING
    return cells


def step_edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges that centre one cell on each step (half-way between neighbours; a lone step gets ±0.5)."""
    s = np.asarray(steps, dtype=float)
    if s.size == 0:
        return np.array([-0.5, 0.5])
    if s.size == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def heatmap_figure(history):
    """The figure of :func:`grad_heatmap` (returned open, so tests can inspect its axes; build it inside
    :func:`_plain_text`, as :func:`grad_heatmap` does, to draw it for a report)."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from matplotlib.ticker import LogLocator, NullFormatter

    names = list(history.layer_names)
    n = max(len(names), 1)
    steps = np.asarray(history.steps, dtype=float)
    edges = step_edges(steps)
    data = normalised_log_grad(history)
    bad = nonfinite_steps(history)
    cells = gradient_cells(history, bad)
    heat_height = min(max(0.32 * n + 0.6, 1.9), 7.0)
    fig = plt.figure(figsize=(10.5, heat_height + 1.9))
    grid = fig.add_gridspec(2, 2, height_ratios=[1.35, heat_height], width_ratios=[60, 1], hspace=0.08,
                            wspace=0.03)
    strip = fig.add_subplot(grid[0, 0])
    heat = fig.add_subplot(grid[1, 0], sharex=strip)
    bar_ax = fig.add_subplot(grid[1, 1])
    fig.add_subplot(grid[0, 1]).axis("off")

    # the global norm on a log scale: a uniform blow-up (or collapse) that per-step normalisation hides
    total = np.asarray(history.scalar("grad_norm"), dtype=float)
    ok = np.isfinite(total) & (total > 0)
    if ok.any():
        strip.plot(steps[ok], total[ok], color="#222222", lw=1.2, marker="o" if ok.sum() <= 30 else None, ms=3)
        strip.set_yscale("log")
        low, high = np.log10(total[ok].min()), np.log10(total[ok].max())
        strip.set_ylim(10.0 ** np.floor(low), 10.0 ** max(np.ceil(high), np.floor(low) + 1))  # whole decades
        strip.yaxis.set_major_locator(LogLocator(numticks=4))
        strip.yaxis.set_minor_formatter(NullFormatter())
    else:
        strip.text(0.5, 0.5, "global norm not recorded", transform=strip.transAxes, ha="center", va="center",
                   color="#666666", fontsize=9)
        strip.set_yticks([])
    if bad.any():
        strip.plot(steps[bad], np.full(bad.sum(), 0.92), "x", color=CELL_STYLE[CELL_NONFINITE][0], ms=8, mew=2,
                   transform=strip.get_xaxis_transform(), label="not finite")
        strip.legend(loc="upper left", fontsize=8, frameon=False)
    strip.set_ylabel("global\nnorm", fontsize=9)
    strip.grid(alpha=0.3, which="major")
    strip.tick_params(labelbottom=False, labelsize=8)
    strip.set_title("Gradient norms: global norm (log scale, top); each layer relative to the largest layer "
                    "at that step (bottom)", fontsize=10, loc="left")

    shown = np.ma.masked_invalid(np.clip(data, HEATMAP_FLOOR, 0.0))
    y_edges = np.arange(n + 1) - 0.5
    mesh = heat.pcolormesh(edges, y_edges, shown.T, cmap="cividis", vmin=HEATMAP_FLOOR, vmax=0.0,
                           shading="flat", rasterized=True)
    special = np.ma.masked_equal(cells, 0)
    heat.pcolormesh(edges, y_edges, special.T, shading="flat", rasterized=True, vmin=0.5, vmax=3.5,
                    cmap=ListedColormap([CELL_STYLE[k][0] for k in (CELL_ZERO, CELL_NONFINITE, CELL_MISSING)]))
    heat.set_xlim(edges[0], edges[-1])
    heat.set_ylim(-0.5, n - 0.5)
    every = max(1, int(math.ceil(n / 30)))
    heat.set_yticks(range(0, len(names), every), labels=[literal(x) for x in names[::every]],
                    fontsize=9 if n <= 20 else 7)
    _integer_steps(heat)
    heat.set_xlabel("step")
    heat.set_ylabel("layer (input at the bottom)")
    bar = fig.colorbar(mesh, cax=bar_ax, extend="min")
    bar.set_ticks(np.arange(HEATMAP_FLOOR, 0.5, 1.0))
    bar.set_ticklabels([("≤" if t == HEATMAP_FLOOR else "") + f"{t:g}".replace("-", "−")
                        for t in np.arange(HEATMAP_FLOOR, 0.5, 1.0)])
    bar.set_label(f"log10(norm ÷ largest layer)\nfixed range −{-HEATMAP_FLOOR:g} … 0", fontsize=9)
    present = [k for k in (CELL_ZERO, CELL_NONFINITE, CELL_MISSING) if (cells == k).any()]
    if present:
        handles = [Patch(facecolor=CELL_STYLE[k][0], edgecolor="#888888", label=CELL_STYLE[k][1]) for k in present]
        heat.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.5 / heat_height),
                    ncol=len(handles), fontsize=9, frameon=False)
    return fig


@_plain_text
def grad_heatmap(history) -> bytes:
    """Layer x step heatmap of the normalised log gradient norm under a log-scale strip of the global norm.

    The heatmap shows each layer relative to the largest layer of the same step (so healthy late
    training, where every gradient is small, does not read as vanishing), on a fixed colour range of
    :data:`HEATMAP_FLOOR` … 0 decades; the strip above, sharing the step axis, shows the global norm, so a
    uniform blow-up is visible.  Exactly-zero, non-finite and unmeasured cells have their own colours."""
    return _png(heatmap_figure(history))


# -- per-layer lines ----------------------------------------------------------------------------------------
def layer_styles(n: int) -> list[tuple[Any, str]]:
    """``(colour, line style)`` for ``n`` layers, input first.  Up to 8 layers: Okabe–Ito colours; more: a
    sequential colormap by depth (dark = input, bright = output).  The line style cycles in both cases, so
    neighbouring layers differ in colour and style, and two layers with the same values (two fully dead
    layers at 1.0) still show as interleaved dashes instead of one hiding the other."""
    if n <= len(OKABE_ITO):
        colours: list[Any] = OKABE_ITO[:n]
    else:
        from matplotlib import colormaps

        colours = [colormaps["viridis"](0.92 * j / (n - 1)) for j in range(n)]
    return [(colours[j], LINE_STYLES[j % len(LINE_STYLES)]) for j in range(n)]


@_plain_text
def activation_health(history) -> bytes | None:
    """Per-layer saturation and dead fraction over steps (None when neither was measured)."""
    sat = np.asarray(history.layer("saturation"), dtype=float)
    dead = np.asarray(history.layer("dead_fraction"), dtype=float)
    if not (np.isfinite(sat).any() or np.isfinite(dead).any()):
        return None
    plt = _pyplot()
    panels = [(data, title) for data, title in ((sat, "Saturated fraction (sigmoid/tanh units near ±1)"),
                                                (dead, "Dead fraction (ReLU units at zero)"))
              if np.isfinite(data).any()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(5.4, 0.4 + 2.4 * len(panels)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    steps = np.asarray(history.steps)
    styles = layer_styles(len(history.layer_names))
    for ax, (data, title) in zip(axes, panels):
        for j, name in enumerate(history.layer_names):
            ok = np.isfinite(data[:, j])
            if ok.any():
                colour, style = styles[j]
                ax.plot(steps[ok], data[ok, j], color=colour, ls=style, label=literal(name), lw=1.4)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("fraction of units")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    _integer_steps(axes[-1])
    handles, labels = [], []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
                   title="layer (input first)", title_fontsize=8, ncol=1 if len(handles) <= 14 else 2)
    return _png(fig)


# -- loss -----------------------------------------------------------------------------------------------------
def loss_series(report, history=None) -> tuple[np.ndarray, np.ndarray]:
    """Steps and training loss: from the history when there is one, else from the report (null = NaN)."""
    if history is not None and len(history):
        return np.asarray(history.steps, dtype=float), np.asarray(history.scalar("loss"), dtype=float)
    steps = np.array([_number(p.get("step")) for p in report.loss], dtype=float)
    values = np.array([_number(p.get("train")) for p in report.loss], dtype=float)
    return steps, values


@_plain_text
def loss_curve(report, history=None) -> bytes | None:
    """Training loss with a dashed line where each finding first opened and a cross where it was not finite."""
    steps, values = loss_series(report, history)
    ok = np.isfinite(values)
    if not ok.any():
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 2.8))
    ax.plot(steps[ok], values[ok], color=OKABE_ITO[0], lw=1.3, label="train loss",
            marker="o" if ok.sum() <= 30 else None, ms=3)
    positive = values[ok] > 0
    if positive.all() and values[ok].max() / max(values[ok].min(), 1e-300) > 100:
        ax.set_yscale("log")
    if (~ok).any():
        ax.plot(steps[~ok], np.full((~ok).sum(), 0.95), "x", color=SEVERITY_COLOURS["error"], ms=8, mew=2,
                transform=ax.get_xaxis_transform(), label="loss not finite")
    for severity in reversed(SEVERITIES):
        opened = sorted({f.first_step for f in report.findings if f.severity == severity})
        for i, step in enumerate(opened):
            ax.axvline(step, color=SEVERITY_COLOURS[severity], ls="--", lw=0.9, alpha=0.85,
                       label=f"{severity} opened" if i == 0 else None)
    ax.set_xlabel("step")
    _integer_steps(ax)
    ax.set_ylabel("loss")
    ax.set_title("Training loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


# -- curvature ------------------------------------------------------------------------------------------------
def _train_settings(report) -> tuple[str | None, float, bool]:
    """The optimizer's name, its momentum β (0 without momentum) and whether it is Nesterov's, from the
    run's ``train`` section: the resolved spec's ``train.momentum`` (None: no momentum; the spec fills in
    0.9 for the ``momentum`` optimizer), or, for a loop without a spec (PyTorch, hand-written), the
    optimizer's hyperparameters that :func:`gradmon.outputs.spec_from_run` puts there.  Only ``sgd`` and
    ``momentum`` have a momentum that enters the stability bound."""
    train = entry(report.spec, "train")
    optimizer = train.get("optimizer")
    optimizer = optimizer if isinstance(optimizer, str) else None
    momentum = _number(train.get("momentum")) if optimizer in STABILITY_BOUND_OPTIMIZERS else 0.0
    momentum = momentum if math.isfinite(momentum) else 0.0  # None (null) reads as NaN
    return (str(optimizer) if optimizer is not None else None), momentum, bool(train.get("nesterov")) and momentum > 0


def curvature_series(report) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, λmax and the stability threshold of each measurement (NaN threshold when not defined):
    the monitor's ``threshold`` when recorded, else the bound of gradient descent at the spec's lr (see
    :func:`gradmon.vocabulary.stability_threshold`)."""
    train = entry(report.spec, "train")
    optimizer, momentum, nesterov = _train_settings(report)
    lr = _number(train.get("lr"))
    steps, lam, thr = [], [], []
    for c in report.curvature:
        steps.append(_number(c.get("step", 0)))
        lam.append(_number(c.get("lambda_max")))
        if "threshold" in c:
            thr.append(_number(c["threshold"]))
        elif optimizer in STABILITY_BOUND_OPTIMIZERS and math.isfinite(lr) and lr > 0:
            thr.append(stability_threshold(lr, momentum, nesterov))
        else:
            thr.append(math.nan)
    return np.array(steps), np.array(lam), np.array(thr)


def threshold_label(report, thresholds: np.ndarray) -> str:
    """The legend of the threshold line: its formula (``2/lr``, ``2(1+β)/lr`` with momentum β, or
    ``2(1+β)/(lr(1+2β))`` with Nesterov's: :func:`gradmon.vocabulary.stability_formula`) and value."""
    _, momentum, nesterov = _train_settings(report)
    formula = stability_formula(momentum, nesterov)
    finite = thresholds[np.isfinite(thresholds)]
    value = f" = {finite[0]:.3g}" if finite.size and np.allclose(finite, finite[0]) else " (follows the lr)"
    beta = f", β = {momentum:g}" if momentum else ""
    return f"stability threshold {formula}{value}{beta}"


def no_threshold_note(report) -> str:
    """Why a run without a stability threshold has no line on the sharpness plot."""
    optimizer, _, _ = _train_settings(report)
    name = literal(optimizer) if optimizer else "this optimizer"
    return (f"No stability line: {name} scales each step per\nparameter, so the 2/lr bound of plain "
            f"gradient\ndescent does not apply (λmax for reference).")


def trace_series(report) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, trace and its standard error of each measurement (NaN where not measured; a report written
    before the error bar existed reads as NaN error)."""
    steps = np.array([_number(c.get("step", 0)) for c in report.curvature])
    trace = np.array([_number(c.get("trace")) for c in report.curvature])
    stderr = np.array([_number(c.get("trace_stderr")) for c in report.curvature])
    return steps, trace, stderr


@_plain_text
def curvature_plot(report) -> bytes | None:
    """λmax per measurement against the stability threshold, the region above it shaded; below it, when
    measured, the trace with a band of ± one standard error."""
    if not report.curvature:
        return None
    steps, lam, thr = curvature_series(report)
    if not np.isfinite(lam).any():
        return None
    plt = _pyplot()
    t_steps, trace, stderr = trace_series(report)
    if np.isfinite(trace).any():
        fig, (ax, tax) = plt.subplots(2, 1, figsize=(5.4, 4.6), sharex=True, height_ratios=(3, 2))
        _trace_panel(tax, t_steps, trace, stderr)
    else:
        fig, ax = plt.subplots(figsize=(5.4, 2.8))
    ax.plot(steps, lam, marker="o", ms=3, color=OKABE_ITO[0], label="λmax (top Hessian eigenvalue)")
    if np.isfinite(thr).any():
        top = max(float(np.nanmax(lam)) * 1.15, float(np.nanmax(thr)) * 1.15)
        ax.plot(steps, thr, color=OKABE_ITO[3], lw=1.5, label=threshold_label(report, thr))
        ax.fill_between(steps, thr, top, color=OKABE_ITO[3], alpha=0.08, label="unstable for gradient descent")
        ax.set_ylim(0, top)
    else:
        ax.set_ylim(0, float(np.nanmax(lam)) * 1.6)
        ax.text(0.02, 0.96, no_threshold_note(report), transform=ax.transAxes, fontsize=7.5, va="top",
                color="#444444")
    if len(fig.axes) == 1:
        ax.set_xlabel("step")
    _integer_steps(ax)
    ax.set_ylabel("λmax of the loss Hessian")
    ax.set_title("Sharpness against the step size", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)


def _trace_panel(ax, steps: np.ndarray, trace: np.ndarray, stderr: np.ndarray) -> None:
    """The trace per measurement, with a band of ± one standard error (none where it is exact or unknown)."""
    ok = np.isfinite(trace)
    err = np.where(np.isfinite(stderr), stderr, 0.0)
    ax.plot(steps[ok], trace[ok], marker="o", ms=3, color=OKABE_ITO[1], label="trace of the Hessian")
    if np.any(err[ok] > 0):
        ax.fill_between(steps[ok], trace[ok] - err[ok], trace[ok] + err[ok], color=OKABE_ITO[1], alpha=0.25,
                        lw=0, label="± 1 standard error")
    elif np.isfinite(stderr[ok]).any():
        ax.text(0.02, 0.92, "exact trace (no error bar)", transform=ax.transAxes, fontsize=7.5, va="top",
                color="#444444")
    ax.set_xlabel("step")
    _integer_steps(ax)
    ax.set_ylabel("trace")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)


def all_plots(report, history=None) -> dict[str, Any]:
    """Every plot that applies: ``{"heatmap": png, "activations": png, "loss": png, "curvature": png}``."""
    out: dict[str, Any] = {}
    if history is not None and len(history):
        out["heatmap"] = grad_heatmap(history)
        act = activation_health(history)
        if act is not None:
            out["activations"] = act
    loss = loss_curve(report, history)
    if loss is not None:
        out["loss"] = loss
    curv = curvature_plot(report)
    if curv is not None:
        out["curvature"] = curv
    return out
