"""Calibration plots (matplotlib, Agg backend): score vs each outcome, fit line and interval band."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from ...errors import InputError
from ..files import write_atomic
from .fit import Calibration, task_points

OUTCOME_LABELS = {"gain": "in-domain gain", "normalized_gain": "normalised gain",
                  "forgetting": "forgetting (mean OOD change)"}


def plot_calibration(calibration: Calibration, records: Sequence[dict] | None, path_png: str | os.PathLike,
                     level: float = 0.90, outcomes: Sequence[str] = ("gain", "forgetting"),
                     highlight: tuple[str, float] | None = None) -> Path:
    """Draw one panel per fitted outcome: tasks labelled by name, fit line, `level` prediction band.

    records: fine-tune records to plot (filtered to the calibration's model/method), or None
    to plot the calibration's own tasks. highlight: `(label, score)` of a new task, drawn at
    its predicted value on every panel. The PNG is written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    key = calibration.score_key
    fitted = [o for o in outcomes if o in calibration.fits.get(key, {})]
    if not fitted:
        raise InputError(f"calibration has no fit of {', '.join(outcomes)} on {key}; nothing to plot")
    points = calibration.points if records is None else task_points(
        records, calibration.model, calibration.method, calibration.pretrained)
    fig = Figure(figsize=(5.2 * len(fitted), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(fitted), squeeze=False)[0]
    for ax, outcome in zip(axes, fitted):
        fit = calibration.fits[key][outcome]
        shown = [p for p in points if key in p.scores and outcome in p.outcomes]
        xs = np.array([p.scores[key] for p in shown] + list(calibration.score_range)
                      + ([highlight[1]] if highlight else []))
        pad = 0.08 * max(float(np.ptp(xs)), 1e-6)
        grid = np.linspace(xs.min() - pad, xs.max() + pad, 200)
        band = np.array([fit.interval(float(g), level) for g in grid])
        ax.fill_between(grid, band[:, 1], band[:, 2], color="tab:blue", alpha=0.15,
                        label=f"{level:.0%} prediction interval")
        ax.plot(grid, band[:, 0], color="tab:blue",
                label=f"fit: {fit.intercept:+.3f} {fit.slope:+.3f}·{key}  (R²={fit.r2:.2f}, p={fit.p_value:.2g})")
        ax.scatter([p.scores[key] for p in shown], [p.outcomes[outcome] for p in shown], color="black", zorder=3)
        for p in shown:
            ax.annotate(p.task, (p.scores[key], p.outcomes[outcome]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        if highlight:
            label, score = highlight
            value, low, high = fit.interval(float(score), level)
            ax.errorbar([score], [value], yerr=[[value - low], [high - value]], fmt="D", color="tab:red",
                        capsize=4, zorder=4, label=f"{label} (predicted)")
        lo, hi = calibration.score_range
        ax.axvspan(lo, hi, color="grey", alpha=0.07, label="calibration range")
        ax.set_xlabel(key)
        ax.set_ylabel(OUTCOME_LABELS.get(outcome, outcome))
        ax.set_title(f"{calibration.model} / {calibration.method}: {outcome}")
        ax.legend(fontsize=7, loc="best")
    return save_figure_atomic(fig, path_png)


def save_figure_atomic(fig, path_png: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically (see `files.write_atomic`)."""
    return write_atomic(path_png, writer=lambda f: fig.savefig(f, format="png", dpi=120))


class ScreenPanel(NamedTuple):
    """One measure of the screen chart: bars (best first) with optional (below, above) interval half-widths."""

    xlabel: str
    labels: list[str]
    values: list[float]
    errors: list[tuple[float, float]] | None


def screen_panels(rows: Sequence) -> list[ScreenPanel]:
    """One panel per measure, never mixed on one axis: the calibrated rows' predicted gain (in the ranked
    order), then the uncalibrated rows' IIMM (highest first)."""
    calibrated = [r for r in rows if r.primary_gain() is not None]
    others = sorted((r for r in rows if r.primary_gain() is None), key=lambda r: -r.iimm)
    panels = []
    if calibrated:
        gains = [r.primary_gain() for r in calibrated]
        panels.append(ScreenPanel("predicted in-domain gain (90% interval)",
                                  [f"{r.dataset} · {r.model}" for r in calibrated], [g["value"] for g in gains],
                                  [(g["value"] - g["low"], g["high"] - g["value"]) for g in gains]))
    if others:
        what = "IIMM of the models without a calibration" if calibrated else "IIMM"
        panels.append(ScreenPanel(f"{what} (higher: more to gain and to forget)",
                                  [f"{r.dataset} · {r.model}" for r in others], [r.iimm for r in others], None))
    return panels


def plot_screen(rows: Sequence, path_png: str | os.PathLike) -> Path:
    """Horizontal bars of each dataset × model, ranked: predicted gain with its interval for calibrated models,
    IIMM in a panel of its own for the others (see `screen_panels`).

    rows: `ScreenRow`s in the order to draw them (best first).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise InputError("no screened dataset to plot; check the catalog and the failures listed above")
    panels = screen_panels(rows)
    heights = [len(p.values) + 1 for p in panels]
    fig = Figure(figsize=(7.5, 0.8 + 0.35 * sum(heights) + 0.5 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, panel in zip(axes, panels):
        ys = np.arange(len(panel.values))[::-1]
        xerr = np.array(panel.errors).T if panel.errors else None
        ax.barh(ys, panel.values, xerr=xerr, color="tab:blue" if panel.errors else "tab:gray", capsize=3)
        ax.set_yticks(ys, panel.labels, fontsize=8)
        ax.set_xlabel(panel.xlabel)
    axes[0].set_title("iimm screen")
    return save_figure_atomic(fig, path_png)
