"""Plotly figures of the viewer's panels, built from numpy arrays (no model code here).

Field panels read like the static strips: columns truth | prediction | error, one shared colour
scale for the field (truth and prediction), a diverging zero-centred one for the error, each with
its colour bar. 1D fields are drawn as curves, 3D fields as their middle slice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

METHOD_LABELS = {
    "persistence": "persistence",
    "ar": "model",
    "ar_refined": "model + refiner",
    "diffusion": "model (diffusion)",
}
FIELD_SCALE, ERROR_SCALE = "Viridis", "RdBu_r"
HEIGHT = 330


def plane(frame: np.ndarray) -> np.ndarray:
    """One field's frame [*space] → what is drawn: 1D and 2D as they are, 3D its middle slice along
    the first axis."""
    return frame[frame.shape[0] // 2] if frame.ndim == 3 else frame


def symmetric_limit(*arrays: np.ndarray) -> float:
    """The largest |value| over ``arrays`` (a zero-centred colour range), never 0."""
    return max([float(np.abs(a).max()) for a in arrays if a.size] + [1e-12])


# A difference below this fraction of the field's range is drawn as zero: the error scale never
# shrinks to float round-off (identical frames would otherwise get a ±1e-12 bar and show their noise
# at full colour).
ERROR_FLOOR = 1e-3


def covering_range(
    value_range: tuple[float, float], frames: list[np.ndarray]
) -> tuple[float, float]:
    """``value_range`` widened to every value of ``frames`` (NaNs ignored)."""
    lo, hi = value_range
    finite = [f[np.isfinite(f)] for f in frames]
    values = [v for v in finite if v.size]
    if values:
        lo, hi = (
            min(lo, *(float(v.min()) for v in values)),
            max(hi, *(float(v.max()) for v in values)),
        )
    return lo, hi


def empty(message: str = "") -> go.Figure:
    fig = go.Figure()
    fig.update_layout(
        height=HEIGHT,
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[{"text": message, "showarrow": False, "font": {"size": 13}}]
        if message
        else [],
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
    )
    return fig


def triptych(
    panels: list[tuple[str, np.ndarray]],
    error: tuple[str, np.ndarray],
    value_range: tuple[float, float],
    error_limit: float,
    field_name: str,
) -> go.Figure:
    """Panels [(title, frame [*space])] on one colour scale ``value_range``, then the error on
    ±``error_limit``.

    A panel with values outside ``value_range`` (a prediction beyond the truth's range) widens the
    scale to show them, and a note under the panels says so: nothing saturates silently.  The error
    scale is at least :data:`ERROR_FLOOR` of the field's range, so identical frames show a zero
    difference as zero, with the note "identical"."""
    titles = [t for t, _ in panels] + [error[0]]
    (lo, hi), error_limit, notes = _scales(panels, error, value_range, error_limit)
    n, spacing = len(titles), 0.1
    width = (1 - spacing * (n - 1)) / n
    # in the gap before the error panel
    value_bar_x = len(panels) * width + (len(panels) - 1) * spacing + 0.008
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles, horizontal_spacing=spacing)
    one_d = plane(panels[0][1]).ndim == 1
    for col, (_, frame) in enumerate(panels, start=1):
        # one value colour bar, beside the last field panel
        bar = (field_name, value_bar_x, col == len(panels))
        _add_field(fig, plane(frame), col, (lo, hi), one_d, bar)
    col = len(titles)
    _add_error(fig, plane(error[1]), col, error_limit, one_d, error[0])
    if not one_d:
        for c in range(1, col + 1):  # square pixels, row 0 at the top as in the PNG strips
            fig.update_xaxes(
                showticklabels=False, scaleanchor=f"y{'' if c == 1 else c}", row=1, col=c
            )
            fig.update_yaxes(showticklabels=False, autorange="reversed", row=1, col=c)
    if notes:
        fig.add_annotation(
            text=" · ".join(notes),
            xref="paper",
            yref="paper",
            x=0,
            y=-0.04,
            xanchor="left",
            yanchor="top",
            showarrow=False,
            font={"size": 11, "color": "#a05a00"},
            name="scale-note",
        )
    fig.update_layout(
        height=HEIGHT,
        margin={"l": 10, "r": 60, "t": 40, "b": 30 if notes else 10},
        plot_bgcolor="white",
        uirevision="keep",
    )
    return fig


def _scales(
    panels: list[tuple[str, np.ndarray]],
    error: tuple[str, np.ndarray],
    value_range: tuple[float, float],
    error_limit: float,
) -> tuple[tuple[float, float], float, list[str]]:
    """The field's colour range widened to every panel, the error's limit with its floor, and the
    notes that say when either happened."""
    notes = []
    lo, hi = covering_range(value_range, [plane(f) for _, f in panels])
    if (lo, hi) != tuple(value_range):
        outside = [
            t
            for t, f in panels
            if np.any(plane(f) < value_range[0]) or np.any(plane(f) > value_range[1])
        ]
        notes.append(
            f"{', '.join(outside)}: values outside [{value_range[0]:.4g}, {value_range[1]:.4g}], "
            f"so the colour scale is widened to [{lo:.4g}, {hi:.4g}]"
        )
    err_frame = plane(error[1])
    error_limit = max(error_limit, ERROR_FLOOR * (hi - lo))
    if err_frame.size and not np.any(err_frame):
        notes.append(f"{error[0]}: identical (0 everywhere)")
    return (lo, hi), error_limit, notes


def _add_field(
    fig: go.Figure,
    img: np.ndarray,
    col: int,
    value_range: tuple[float, float],
    one_d: bool,
    bar: tuple[str, float, bool],
) -> None:
    """One field panel: a curve for 1D, a heatmap for 2D; ``bar``: the colour bar's (title, x,
    shown)."""
    lo, hi = value_range
    bar_title, bar_x, show_bar = bar
    if one_d:
        fig.add_trace(
            go.Scatter(y=img, mode="lines", line={"color": "#1f77b4"}, showlegend=False), 1, col
        )
        fig.update_yaxes(range=[lo, hi], row=1, col=col)
        return
    fig.add_trace(
        go.Heatmap(
            z=img,
            zmin=lo,
            zmax=hi,
            colorscale=FIELD_SCALE,
            showscale=show_bar,
            colorbar={
                "title": {"text": bar_title},
                "x": bar_x,
                "xanchor": "left",
                "thickness": 12,
                "len": 0.9,
            },
            hovertemplate="x %{x}, y %{y}: %{z:.4g}<extra></extra>",
        ),
        1,
        col,
    )


def _add_error(
    fig: go.Figure, err: np.ndarray, col: int, error_limit: float, one_d: bool, title: str
) -> None:
    """The error panel on a zero-centred diverging scale ±``error_limit``."""
    if one_d:
        fig.add_trace(
            go.Scatter(y=err, mode="lines", line={"color": "#d62728"}, showlegend=False), 1, col
        )
        fig.update_yaxes(range=[-error_limit, error_limit], row=1, col=col)
        return
    fig.add_trace(
        go.Heatmap(
            z=err,
            zmin=-error_limit,
            zmax=error_limit,
            zmid=0,
            colorscale=ERROR_SCALE,
            colorbar={
                "title": {"text": title},
                "x": 1.01,
                "xanchor": "left",
                "thickness": 12,
                "len": 0.9,
            },
            hovertemplate="x %{x}, y %{y}: %{z:.3g}<extra></extra>",
        ),
        1,
        col,
    )


def horizon_curve(
    per_window: dict[str, np.ndarray],
    run_mean: dict[str, dict[int, float]],
    frame: int,
    field_name: str,
) -> go.Figure:
    """VRMSE of this window per step for each method (solid; ``per_window`` method → [H]), the
    evaluate run's mean over its windows at the horizons it scored (dotted, markers; ``run_mean``
    method → {horizon: VRMSE}), the current step marked."""
    fig = go.Figure()
    for i, (method, values) in enumerate(per_window.items()):
        colour = f"hsl({(i * 97) % 360},60%,45%)"
        steps = list(range(1, len(values) + 1))
        label = METHOD_LABELS.get(method, method)
        fig.add_trace(
            go.Scatter(
                x=steps, y=values, mode="lines+markers", name=f"{label}", line={"color": colour}
            )
        )
        if method in run_mean:
            horizons = sorted(run_mean[method])
            fig.add_trace(
                go.Scatter(
                    x=horizons,
                    y=[run_mean[method][h] for h in horizons],
                    mode="lines+markers",
                    marker={"symbol": "circle-open", "size": 8},
                    name=f"{label}, mean of the run's windows",
                    line={"color": colour, "dash": "dot"},
                )
            )
    fig.add_vline(x=frame + 1, line={"color": "black", "width": 1.5})
    fig.add_hline(
        y=1.0,
        line={"color": "grey", "width": 1, "dash": "dot"},
        annotation_text="spatial mean",
        annotation_position="bottom left",
    )
    fig.update_layout(
        height=HEIGHT,
        xaxis={"title": {"text": "rollout step"}, "dtick": 1},
        yaxis_title=f"VRMSE ({field_name})",
        yaxis_rangemode="tozero",
        margin={"l": 50, "r": 10, "t": 30, "b": 40},
        legend={"font": {"size": 10}},
    )
    return fig


def dose_response(
    points: list[dict[str, Any]], current: float, target: str, statistic: str
) -> go.Figure:
    """Probe reading and physical statistic vs α over every α computed so far; the current α
    highlighted."""
    points = sorted(points, key=lambda p: p["alpha"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"probe reading of {target}", statistic))
    alphas = [p["alpha"] for p in points]
    for col, key in ((1, "probe"), (2, "statistic")):
        ys = [p[key] for p in points]
        fig.add_trace(go.Scatter(x=alphas, y=ys, mode="lines+markers", showlegend=False), 1, col)
        now = [y for a, y in zip(alphas, ys) if a == current]
        if now:
            fig.add_trace(
                go.Scatter(
                    x=[current],
                    y=now,
                    mode="markers",
                    marker={"size": 13, "color": "#d62728"},
                    showlegend=False,
                ),
                1,
                col,
            )
        fig.update_xaxes(title_text="α", row=1, col=col)
    fig.update_layout(height=HEIGHT, margin={"l": 50, "r": 10, "t": 40, "b": 40})
    return fig


def probe_layers(metrics: dict[str, Any]) -> go.Figure:
    """A probe run's held-out R² per layer, with its code-histogram and embedding baselines."""
    layers = metrics.get("layers") or {}
    names = list(layers)
    fig = go.Figure(go.Bar(x=names, y=[layers[n].get("r2") for n in names], name="held-out R²"))
    for key, label in (
        ("probe_r2_code_histogram", "code histogram"),
        ("probe_r2_embedding", "embedding"),
    ):
        if key in metrics:
            fig.add_hline(y=metrics[key], line={"dash": "dash"}, annotation_text=label)
    # The axis spans every bar and every baseline line: a negative R² (worse than the mean) stays in
    # view.
    shown = [layers[n].get("r2") for n in names] + [
        metrics.get(k) for k in ("probe_r2_code_histogram", "probe_r2_embedding")
    ]
    finite = [float(v) for v in shown if isinstance(v, (int, float)) and np.isfinite(v)]
    fig.update_layout(
        height=HEIGHT,
        yaxis_title=f"R² of {metrics.get('target', '?')}",
        yaxis_range=[min(0.0, *finite) - 0.05, max(1.0, *finite) + 0.02] if names else None,
        margin={"l": 50, "r": 10, "t": 30, "b": 60},
    )
    return fig


def code_usage(metrics: dict[str, Any]) -> go.Figure:
    """A tokenizer evaluation's code usage (fraction of the codebook used) per dataset."""
    datasets = metrics.get("datasets") or {}
    names = sorted(datasets)
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[datasets[n].get("code_usage") for n in names],
            text=[f"perplexity {datasets[n].get('perplexity', float('nan')):.0f}" for n in names],
        )
    )
    fig.update_layout(
        height=HEIGHT,
        yaxis_title="code usage",
        yaxis_range=[0, 1],
        margin={"l": 50, "r": 10, "t": 30, "b": 40},
    )
    return fig
