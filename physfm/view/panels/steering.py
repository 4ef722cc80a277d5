"""The steering panel: a direction added to a model's activations at a strength α, the steered frame
beside the unsteered one, the probe's readout and the dose-response curve over the α values
tried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from dash import Input, Output, State, dcc, html, no_update

from data_pipelines.errors import PhysfmError
from physfm.interp.steer_rollout import infer_target
from physfm.view import figures
from physfm.view.compute import STEER_WINDOWS
from physfm.view.layout import (
    ALPHA_MAX,
    ALPHA_MIN,
    ALPHA_STEP,
    MAX_STEER_FRAMES,
    MODEL_KINDS,
    control,
    dropdown,
    options,
    rel_in,
)
from physfm.view.panels.site import ERROR, FIGURE, Site, callback, guarded
from physfm.view.runs import Run, find_directions, resolve_recorded


def _controls(runs: list[Run], root: Path) -> html.Div:
    directions = find_directions(root)
    direction_rels = [rel_in(p, root) for p, _ in directions]
    direction_labels = [
        f"{rel} ({m.get('feature', '?')} − {m.get('control', '?')})"
        for rel, (_, m) in zip(direction_rels, directions)
    ]
    model_rels = [r.rel for r in runs if r.kind in MODEL_KINDS and not r.error]
    probe_rels = [r.rel for r in runs if r.kind == "probe" and not r.error]
    windows = [{"label": f"test window {i}", "value": i} for i in range(STEER_WINDOWS)]
    horizon = dcc.Input(
        id="steer-horizon",
        type="number",
        min=1,
        max=MAX_STEER_FRAMES,
        step=1,
        value=1,
        debounce=True,
    )
    return html.Div(
        [
            control(
                "direction",
                dropdown("steer-direction", direction_rels, direction_labels),
                wide=True,
            ),
            control("model", dropdown("steer-model", model_rels), wide=True),
            control("probe (readout)", dropdown("steer-probe", probe_rels, none="none")),
            control(
                "context",
                dcc.Dropdown(id="steer-window", options=windows, value=0, clearable=False),
            ),
            control("token frames", horizon),
            control("field", dcc.Dropdown(id="steer-field", clearable=False)),
        ],
        className="controls",
    )


def layout(runs: list[Run], root: Path) -> list:
    return [
        html.H2("Steering"),
        _controls(runs, root),
        html.Div(id="steer-msg"),
        html.Div(
            [
                html.Label("α (a fraction of each token's activation norm)"),
                dcc.Slider(
                    id="steer-alpha",
                    min=ALPHA_MIN,
                    max=ALPHA_MAX,
                    step=ALPHA_STEP,
                    value=0.0,
                    marks={float(a): f"{a:g}" for a in np.arange(ALPHA_MIN, ALPHA_MAX + 0.01, 0.5)},
                ),
            ]
        ),
        html.Div(id="steer-readout", className="readout"),
        html.Div(
            [
                html.Div(
                    dcc.Graph(id="steer-frames", config={"displaylogo": False}), className="grow"
                ),
                html.Div(
                    dcc.Graph(id="steer-dose", config={"displaylogo": False}), className="side"
                ),
            ],
            className="row",
        ),
        dcc.Store(id="steer-state"),
    ]


class SteeringPanel:
    def __init__(self, site: Site):
        self.site = site

    @callback(
        Output("steer-model", "value"),
        Output("steer-probe", "value"),
        Input("steer-direction", "value"),
        State("steer-model", "options"),
        State("steer-probe", "options"),
    )
    @guarded(no_update, no_update)
    def steer_defaults(self, direction, model_options, probe_options):
        """The model a direction was computed on, and a probe of that model for the same target."""
        if not direction:
            return no_update, no_update
        root = self.site.root
        meta = next((m for p, m in find_directions(root) if p == root / direction), {})
        model = resolve_recorded(meta.get("checkpoint", ""), (root / direction).parent, root)
        model_rel = rel_in(model, root)
        models = [o["value"] for o in model_options or []]
        try:
            target = infer_target(meta)
        # selections that name no single parameter: any probe of the model
        except (PhysfmError, KeyError):
            target = None
        probe_rel = "none"
        for o in probe_options or []:
            if o["value"] == "none":
                continue
            m = self.site.run_at(o["value"]).metrics
            same = (
                rel_in(resolve_recorded(m.get("checkpoint", ""), root / o["value"], root), root)
                == model_rel
            )
            if same and target in (None, m.get("target")):
                probe_rel = o["value"]
                break
        return (model_rel if model_rel in models else no_update), probe_rel

    @callback(
        Output("steer-state", "data"),
        Output("steer-field", "options"),
        Output("steer-field", "value"),
        Output("steer-msg", "children"),
        Input("steer-model", "value"),
        Input("steer-direction", "value"),
        Input("steer-probe", "value"),
        Input("steer-window", "value"),
        Input("steer-horizon", "value"),
        State("steer-field", "value"),
    )
    @guarded(None, [], None, ERROR)
    def steer_prepare(self, model, direction, probe, window, horizon, field):
        if not (model and direction) or window is None:
            return None, [], None, html.Span("pick a model and a direction", className="note")
        state = {
            "model": model,
            "direction": direction,
            "probe": None if probe in (None, "none") else probe,
            "window": int(window),
            "horizon": min(max(int(horizon or 1), 1), MAX_STEER_FRAMES),
        }
        setup = self._setup(state)
        names = setup.pm.channel_names(setup.dataset)
        d = setup.direction.meta
        where = ", ".join(
            f"{k}={v}" for k, v in setup.meta.items() if k in ("source_file", "trajectory", "start")
        )
        msg = html.Span(
            f"{d.get('feature')} − {d.get('control')} at {', '.join(setup.direction.points)} "
            f"({setup.spatial_mode}); context {setup.dataset} {where}; {setup.horizon} generated token frame(s) per α",
            className="note",
        )
        return state, options(names), field if field in names else names[0], msg

    def _setup(self, state: dict[str, Any]):
        inside = self.site.inside
        return self.site.bench.steer_setup(
            inside(state["model"]),
            inside(state["direction"]),
            inside(state["probe"]) if state["probe"] else None,
            int(state["window"]),
            min(max(int(state["horizon"]), 1), MAX_STEER_FRAMES),
        )

    @callback(
        Output("steer-frames", "figure"),
        Output("steer-readout", "children"),
        Output("steer-dose", "figure"),
        Input("steer-state", "data"),
        Input("steer-alpha", "value"),
        Input("steer-field", "value"),
    )
    @guarded(FIGURE, ERROR, FIGURE)
    def steer_alpha(self, state, alpha, field):
        if not state or field is None:
            return figures.empty("pick a model and a direction"), "", figures.empty()
        setup = self._setup(state)
        alpha = float(alpha or 0.0)
        bench = self.site.bench
        base, now = bench.steer(setup, 0.0), bench.steer(setup, alpha)
        c = setup.pm.channel_names(setup.dataset).index(field)
        f0, fa = base.frames[-1, c], now.frames[-1, c]
        lo = float(min(f0.min(), fa.min(), setup.context_frame[c].min()))
        hi = float(max(f0.max(), fa.max(), setup.context_frame[c].max()))
        fig = figures.triptych(
            [("last context frame", setup.context_frame[c]), ("α = 0", f0), (f"α = {alpha:g}", fa)],
            ("steered − unsteered", fa - f0),
            (lo, hi),
            figures.symmetric_limit(fa - f0),
            field,
        )
        target = setup.probe.target if setup.probe else "(no probe)"
        statistic = next(iter(now.statistics))
        points = [
            {
                "alpha": a,
                "probe": r.probe_value if r.probe_value is not None else float("nan"),
                "statistic": r.statistics[statistic],
            }
            for a, r in sorted(setup.results.items())
        ]
        readout = html.Div(_readout(alpha, target, base, now), id="steer-readout-text")
        return fig, readout, figures.dose_response(points, round(alpha, 6), target, statistic)


def _readout(alpha: float, target: str, base, now) -> str:
    """One line: α, the probe's value and each statistic beside their unsteered values, where it
    came from."""
    parts = [f"α = {alpha:g}"]
    if now.probe_value is not None:
        parts.append(f"probe {target} = {now.probe_value:.4g} (α=0: {base.probe_value:.4g})")
    parts += [f"{k} = {v:.4g} (α=0: {base.statistics[k]:.4g})" for k, v in now.statistics.items()]
    parts.append("from the cache" if now.seconds == 0 else f"computed in {now.seconds:.2f} s")
    return " · ".join(parts)
