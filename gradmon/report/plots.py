"""Plots for the HTML report (matplotlib, Agg backend), returned as PNG bytes.

Each plot separates its numbers (a function tests can check) from the drawing.  Colours come from the
colour-blind-safe Okabe–Ito palette and the ``cividis`` map.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
SEVERITY_COLOUR = {"error": "#D55E00", "warning": "#E69F00", "info": "#0072B2"}


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


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


def grad_heatmap(history) -> bytes:
    """Layer x step heatmap of the normalised log gradient norm."""
    plt = _pyplot()
    data = normalised_log_grad(history)
    steps = np.asarray(history.steps)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(history.layer_names) + 1.4))
    finite = data[np.isfinite(data)]
    low = min(-3.0, float(np.floor(finite.min()))) if finite.size else -3.0
    extent = (float(steps[0]) if steps.size else 0, float(steps[-1]) if steps.size else 1, -0.5,
              len(history.layer_names) - 0.5)
    im = ax.imshow(data.T, aspect="auto", origin="lower", cmap="cividis", vmin=low, vmax=0, extent=extent,
                   interpolation="nearest")
    ax.set_yticks(range(len(history.layer_names)), labels=history.layer_names)
    ax.set_xlabel("step")
    ax.set_ylabel("layer (input at the bottom)")
    ax.set_title("Gradient norm by layer, relative to the largest layer at each step")
    fig.colorbar(im, ax=ax, label="log10(norm / max over layers)")
    return _png(fig)


def activation_health(history) -> bytes | None:
    """Per-layer saturation and dead fraction over steps (None when neither was measured)."""
    sat = np.asarray(history.layer("saturation"), dtype=float)
    dead = np.asarray(history.layer("dead_fraction"), dtype=float)
    if not (np.isfinite(sat).any() or np.isfinite(dead).any()):
        return None
    plt = _pyplot()
    panels = [(data, title) for data, title in ((sat, "Saturated fraction (sigmoid/tanh)"),
                                                (dead, "Dead fraction (ReLU)")) if np.isfinite(data).any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 2.6), sharey=True, squeeze=False)
    axes = axes[0]
    steps = np.asarray(history.steps)
    for ax, (data, title) in zip(axes, panels):
        for j, name in enumerate(history.layer_names):
            ok = np.isfinite(data[:, j])
            if ok.any():
                ax.plot(steps[ok], data[ok, j], color=OKABE_ITO[j % len(OKABE_ITO)], label=name, lw=1.3)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of units")
    handles, labels = [], []
    for ax in axes:
        h, l = ax.get_legend_handles_labels()
        for hh, ll in zip(h, l):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return _png(fig)


def loss_series(report, history=None) -> tuple[np.ndarray, np.ndarray]:
    if history is not None and len(history):
        return np.asarray(history.steps, dtype=float), np.asarray(history.scalar("loss"), dtype=float)
    steps = np.array([p["step"] for p in report.loss], dtype=float)
    values = np.array([float(p["train"]) if not isinstance(p["train"], str) else math.nan for p in report.loss])
    return steps, values


def loss_curve(report, history=None) -> bytes | None:
    """Training loss with a marker where each finding first opened."""
    steps, values = loss_series(report, history)
    ok = np.isfinite(values)
    if not ok.any():
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.plot(steps[ok], values[ok], color=OKABE_ITO[0], lw=1.2, label="train loss")
    positive = values[ok] > 0
    if positive.all() and values[ok].max() / max(values[ok].min(), 1e-300) > 100:
        ax.set_yscale("log")
    for f in report.findings:
        ax.axvline(f.first_step, color=SEVERITY_COLOUR.get(f.severity, "grey"), ls="--", lw=0.8, alpha=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss (dashed: findings opening)")
    ax.grid(alpha=0.3)
    return _png(fig)


def curvature_series(report) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, λmax and the stability threshold of each measurement (NaN threshold when not defined)."""
    train = report.spec.get("train", {}) if isinstance(report.spec, dict) else {}
    optimizer = train.get("optimizer")
    lr = train.get("lr")
    momentum = float(train.get("momentum", 0.0) or 0.0) if optimizer == "momentum" else 0.0
    steps, lam, thr = [], [], []
    for c in report.curvature:
        steps.append(float(c.get("step", 0)))
        lam.append(float(c.get("lambda_max", math.nan)))
        if "threshold" in c:
            thr.append(float(c["threshold"]))
        elif optimizer in ("sgd", "momentum") and isinstance(lr, (int, float)) and lr > 0:
            thr.append(2.0 * (1.0 + momentum) / lr)
        else:
            thr.append(math.nan)
    return np.array(steps), np.array(lam), np.array(thr)


def curvature_plot(report) -> bytes | None:
    """λmax per measurement against the stability threshold, the region above it shaded."""
    if not report.curvature:
        return None
    steps, lam, thr = curvature_series(report)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.plot(steps, lam, marker="o", ms=3, color=OKABE_ITO[0], label="λmax (top Hessian eigenvalue)")
    if np.isfinite(thr).any():
        top = max(float(np.nanmax(lam)) * 1.1, float(np.nanmax(thr)) * 1.1)
        ax.plot(steps, thr, color=OKABE_ITO[3], lw=1.5, label="stability threshold 2/lr")
        ax.fill_between(steps, thr, top, color=OKABE_ITO[3], alpha=0.08, label="unstable for gradient descent")
        ax.set_ylim(0, top)
    ax.set_xlabel("step")
    ax.set_ylabel("curvature (1/loss units)")
    ax.set_title("Sharpness against the step size")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)


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
