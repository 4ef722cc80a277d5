"""The rollout panel: an evaluate run's windows, truth | prediction | error per step, the VRMSE
curve per horizon, and a play button that steps through the rollout."""

from __future__ import annotations

from dash import Input, Output, State, callback_context, dcc, html

from physfm.view import figures
from physfm.view.layout import (
    PLAY_INTERVAL_MS,
    ROLLOUT_KINDS,
    control,
    dropdown,
    options,
    step_marks,
)
from physfm.view.panels.site import ERROR, FIGURE, Site, callback, guarded
from physfm.view.runs import Run


def layout(runs: list[Run]) -> list:
    rels = [r.rel for r in runs if r.kind in ROLLOUT_KINDS and not r.error]
    return [
        html.H2("Rollouts"),
        html.Div(
            [
                control("evaluate run", dropdown("rollout-run", rels), wide=True),
                control("dataset", dcc.Dropdown(id="rollout-dataset", clearable=False)),
                control("window", dcc.Dropdown(id="rollout-window", clearable=False)),
                control("field", dcc.Dropdown(id="rollout-field", clearable=False)),
                control("method", dcc.RadioItems(id="rollout-method", inline=True)),
            ],
            className="controls",
        ),
        html.Div(id="rollout-msg"),
        html.Div(
            [
                html.Div(
                    dcc.Graph(id="rollout-frames", config={"displaylogo": False}), className="grow"
                ),
                html.Div(
                    dcc.Graph(id="rollout-curve", config={"displaylogo": False}), className="side"
                ),
            ],
            className="row",
        ),
        html.Div(
            [
                html.Button("▶ play", id="rollout-play", n_clicks=0),
                html.Div(
                    dcc.Slider(
                        id="rollout-frame", min=1, max=1, step=1, value=1, updatemode="drag"
                    ),
                    style={"flex": "1"},
                ),
            ],
            className="controls",
            style={"alignItems": "center"},
        ),
        dcc.Interval(id="rollout-timer", interval=PLAY_INTERVAL_MS, disabled=True),
        dcc.Store(id="rollout-state"),
    ]


class RolloutPanel:
    def __init__(self, site: Site):
        self.site = site

    @callback(
        Output("rollout-dataset", "options"),
        Output("rollout-dataset", "value"),
        Input("rollout-run", "value"),
    )
    @guarded([], None)
    def rollout_datasets(self, rel):
        names = sorted(self.site.run_at(rel).metrics.get("n_windows") or {})
        return options(names), names[0] if names else None

    @callback(
        Output("rollout-window", "options"),
        Output("rollout-window", "value"),
        Input("rollout-run", "value"),
        Input("rollout-dataset", "value"),
    )
    @guarded([], None)
    def rollout_windows(self, rel, dataset):
        n = int((self.site.run_at(rel).metrics.get("n_windows") or {}).get(dataset, 0))
        return [{"label": f"window {i}", "value": i} for i in range(n)], 0 if n else None

    @callback(
        Output("rollout-state", "data"),
        Output("rollout-field", "options"),
        Output("rollout-field", "value"),
        Output("rollout-method", "options"),
        Output("rollout-method", "value"),
        Output("rollout-frame", "max"),
        Output("rollout-frame", "marks"),
        Output("rollout-frame", "value"),
        Output("rollout-msg", "children"),
        Input("rollout-window", "value"),
        Input("rollout-run", "value"),
        Input("rollout-dataset", "value"),
        State("rollout-field", "value"),
        State("rollout-method", "value"),
    )
    @guarded(None, [], None, [], None, 1, {}, 1, ERROR)
    def rollout_compute(self, window, rel, dataset, field, method):
        if window is None or dataset is None:
            return None, [], None, [], None, 1, {}, 1, ""
        run = self.site.run_at(rel)
        r = self.site.bench.rollout(run.path, run.metrics, dataset, int(window))
        methods = [m for m in r.predictions if m != "persistence"] + ["persistence"]
        # A run's first view shows what a user gets by default (evaluate's default_method, e.g. the
        # refined model); a method picked by hand stays picked across windows.
        default = run.metrics.get("default_method")
        first = default if default in methods else methods[0]
        H = r.truth.shape[0]
        where = ", ".join(
            f"{k}={v}" for k, v in r.meta.items() if k in ("source_file", "trajectory", "start")
        )
        msg = html.Span(
            f"{dataset} window {window} ({where}); computed in {r.seconds:.2f} s", className="note"
        )
        return (
            {"run": rel, "dataset": dataset, "window": int(window)},
            options(r.channel_names),
            field if field in r.channel_names else r.channel_names[0],
            [{"label": figures.METHOD_LABELS.get(m, m), "value": m} for m in methods],
            method
            if method in methods and callback_context.triggered_id != "rollout-run"
            else first,
            H,
            step_marks(H),
            1,
            msg,
        )

    @callback(
        Output("rollout-frames", "figure"),
        Output("rollout-curve", "figure"),
        Input("rollout-state", "data"),
        Input("rollout-field", "value"),
        Input("rollout-method", "value"),
        Input("rollout-frame", "value"),
    )
    @guarded(FIGURE, FIGURE)
    def rollout_figures(self, state, field, method, frame):
        if not state or field is None or method is None:
            return figures.empty("pick an evaluate run"), figures.empty()
        run = self.site.run_at(state["run"])
        r = self.site.bench.rollout(run.path, run.metrics, state["dataset"], state["window"])
        # step → index
        c, k = r.channel_names.index(field), min(max(int(frame or 1), 1), r.truth.shape[0]) - 1
        truth, pred = r.truth[:, c], r.predictions[method][:, c]
        errors = [p[:, c] - truth for p in r.predictions.values()]
        frames = figures.triptych(
            [
                (f"truth t+{k + 1}", truth[k]),
                (f"{figures.METHOD_LABELS.get(method, method)} t+{k + 1}", pred[k]),
            ],
            ("prediction − truth", pred[k] - truth[k]),
            (float(truth.min()), float(truth.max())),
            # one error scale for every method and step: comparable by eye
            figures.symmetric_limit(*errors),
            field,
        )
        per_window = {m: v[:, c] for m, v in r.vrmse.items()}
        fields = ((run.metrics.get("vrmse") or {}).get(state["dataset"]) or {}).get("fields") or {}
        run_mean = {
            m: {int(h): v for h, v in by_h.items()} for m, by_h in fields.get(field, {}).items()
        }
        return frames, figures.horizon_curve(per_window, run_mean, k, field)

    @callback(
        Output("rollout-timer", "disabled"),
        Output("rollout-play", "children"),
        Input("rollout-play", "n_clicks"),
        State("rollout-timer", "disabled"),
        prevent_initial_call=True,
    )
    def toggle_play(self, _, disabled):
        return (False, "⏸ pause") if disabled else (True, "▶ play")

    @callback(
        Output("rollout-frame", "value", allow_duplicate=True),
        Input("rollout-timer", "n_intervals"),
        State("rollout-frame", "value"),
        State("rollout-frame", "max"),
        prevent_initial_call=True,
    )
    def advance(self, _, step, last):
        return 1 if (step or 1) >= (last or 1) else (step or 1) + 1
