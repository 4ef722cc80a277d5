"""The ``physfm view`` page: a Dash app over every run under RUNS_DIR.

Dash (Plotly's framework for analytical web apps) serves its JavaScript and CSS itself (``serve_locally``), so
the page works with no network; its callbacks run on the server, where the models are. Sections: the run list
(kind, date, headline figures, report.md), the rollout viewer, the steering panel, the tokenizer panel and the
probe's R² per layer. Files of the runs (the reports' figures) come from ``/files/<path>``, which serves only
regular files under RUNS_DIR and answers 404 (logged) to anything else.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from dash import Dash, Input, Output, State, dcc, html, no_update
from flask import abort, request, send_file

from data_pipelines.errors import PhysfmError
from physfm.interp.steer_rollout import infer_target
from physfm.view import figures
from physfm.view.compute import STEER_WINDOWS, Workbench
from physfm.view.runs import Run, discover_runs, find_directions, read_run, resolve_recorded, safe_file

log = logging.getLogger("physfm.view")

ROLLOUT_KINDS = ("evaluate", "rollout")
MODEL_KINDS = ("pretrain", "finetune", "export")
ALPHA_MIN, ALPHA_MAX, ALPHA_STEP = -2.0, 2.0, 0.25
PLAY_INTERVAL_MS = 700
FILES = "/files/"
SLOW_CALLBACK_S = 0.5
MAX_STEER_FRAMES = 8  # generated token frames per α: each costs a forward pass per α

CSS = """
body { font-family: system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
h1 { font-size: 1.4em; margin: .6em 0 .2em; } h2 { font-size: 1.15em; margin: 1.4em 0 .4em; border-bottom: 1px solid #ddd; }
.controls { display: flex; flex-wrap: wrap; gap: .8em; align-items: end; margin-bottom: .4em; }
.controls label { font-size: .8em; color: #555; display: block; }
.control { min-width: 12em; } .control.wide { min-width: 22em; }
.row { display: flex; flex-wrap: wrap; gap: 1em; } .row > .grow { flex: 3 1 40em; } .row > .side { flex: 2 1 26em; }
.run { border-bottom: 1px solid #eee; } .run summary { cursor: pointer; padding: .25em 0; display: flex; gap: 1em; }
.kind { display: inline-block; min-width: 7.5em; font-weight: 600; } .rel { font-family: monospace; min-width: 20em; }
.date { color: #777; min-width: 9em; } .headline span { margin-right: 1em; }
.report { padding: .2em 1em 1em; background: #fafafa; } .report img { max-width: 100%; }
.report table { border-collapse: collapse; font-size: .85em; } .report td, .report th { border: 1px solid #ddd; padding: 2px 6px; }
.error-card { border: 1px solid #d9534f; background: #fdf0ef; color: #8a1f1b; padding: .5em .8em; margin: .3em 0; border-radius: 4px; }
.readout { font-family: monospace; font-size: .9em; padding: .4em 0; }
.note { color: #666; font-size: .85em; }
"""

INDEX = (
    """<!DOCTYPE html>
<html><head>{%metas%}<title>{%title%}</title>{%favicon%}{%css%}<style>"""
    + CSS
    + """</style></head>
<body>{%app_entry%}<footer>{%config%}{%scripts%}{%renderer%}</footer></body></html>"""
)


# ---------------------------------------------------------------------------------------------- helpers
def error_card(message: str) -> html.Div:
    return html.Div(message, className="error-card")


def guarded(*fallback: Any):
    """Run a callback; on an exception, log it and return ``fallback`` with every ``ERROR`` slot replaced by an
    error card naming the problem, so one bad run leaves the rest of the page working."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args):
            start = time.perf_counter()
            try:
                result = fn(*args)
                if time.perf_counter() - start > SLOW_CALLBACK_S:  # where a slow page spends its time
                    log.info("%s: %.2f s", fn.__name__, time.perf_counter() - start)
                return result
            except Exception as err:  # shown to the user; the traceback goes to the log
                expected = isinstance(err, (PhysfmError, ValueError, OSError))  # bad input, not a bug: no traceback
                log.warning("%s: %s", fn.__name__, err, exc_info=not expected)
                card = error_card(f"{type(err).__name__}: {err}")
                out = tuple(
                    card if v is ERROR else figures.empty(str(err)[:120]) if v is FIGURE else v for v in fallback
                )
                return out if len(out) > 1 else out[0]

        return inner

    return wrap


ERROR, FIGURE = object(), object()  # placeholders in a guarded callback's fallback


def link_figures(report: str, rel: str) -> str:
    """report.md's relative image and link targets → /files/<run>/<target>."""
    base = "" if rel == "." else rel + "/"

    def fix(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^[a-z]+:|^/|^#", target):
            return m.group(0)
        return f"{m.group(1)}/files/{base}{target}{m.group(3)}"

    return re.sub(r"(\]\()([^)\s]+)(\))", fix, report)


def options(values: list[str], labels: list[str] | None = None) -> list[dict[str, str]]:
    return [{"label": label, "value": v} for v, label in zip(values, labels or values)]


def control(label: str, component, wide: bool = False) -> html.Div:
    return html.Div([html.Label(label), component], className="control wide" if wide else "control")


def step_marks(n: int) -> dict[int, str]:
    """Marks of a slider over rollout steps 1..n (at most about a dozen)."""
    every = max(1, n // 12)
    return {k: f"t+{k}" for k in range(1, n + 1, every)}


# ---------------------------------------------------------------------------------------------- app
def create_app(root: str | Path, workbench: Workbench | None = None) -> Dash:
    root = Path(root).resolve()
    bench = workbench or Workbench(root)
    app = Dash(__name__, title="physfm view", update_title=None, serve_locally=True)
    app.index_string = INDEX
    server = app.server

    @server.before_request
    def serve_file():
        """/files/<path under the root>. A hook rather than a route: a route's path converter does not match
        "/files//etc/passwd", which would then fall through to Dash's catch-all page instead of a 404."""
        if ".." in request.path.split("/") or request.path.startswith("//"):  # Dash would answer with its page
            log.warning("refused %s: climbs out of the site", request.path)
            abort(404)
        if not request.path.startswith(FILES):
            return None
        rel = request.path[len(FILES) :]
        target = safe_file(root, rel)
        if target is None:
            log.warning("refused %s: not a file under %s", request.path, root)
            abort(404)
        return send_file(target)

    def run_at(rel: str | None) -> Run:
        """The run at ``rel`` under the root, read afresh (refused outside the root)."""
        if not rel:
            raise ValueError("no run picked")
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_dir():
            raise ValueError(f"{rel}: not a run directory under {root}")
        run = read_run(path, root)
        if run.error:
            raise ValueError(f"{rel}: {run.error}")
        return run

    app.layout = lambda: page(root)

    # ------------------------------------------------------------------ rollout viewer
    @app.callback(
        Output("rollout-dataset", "options"),
        Output("rollout-dataset", "value"),
        Input("rollout-run", "value"),
    )
    @guarded([], None)
    def rollout_datasets(rel):
        names = sorted(run_at(rel).metrics.get("n_windows") or {})
        return options(names), names[0] if names else None

    @app.callback(
        Output("rollout-window", "options"),
        Output("rollout-window", "value"),
        Input("rollout-run", "value"),
        Input("rollout-dataset", "value"),
    )
    @guarded([], None)
    def rollout_windows(rel, dataset):
        n = int((run_at(rel).metrics.get("n_windows") or {}).get(dataset, 0))
        return [{"label": f"window {i}", "value": i} for i in range(n)], 0 if n else None

    @app.callback(
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
    def rollout_compute(window, rel, dataset, field, method):
        if window is None or dataset is None:
            return None, [], None, [], None, 1, {}, 1, ""
        run = run_at(rel)
        r = bench.rollout(run.path, run.metrics, dataset, int(window))
        methods = [m for m in r.predictions if m != "persistence"] + ["persistence"]
        H = r.truth.shape[0]
        where = ", ".join(f"{k}={v}" for k, v in r.meta.items() if k in ("source_file", "trajectory", "start"))
        msg = html.Span(f"{dataset} window {window} ({where}); computed in {r.seconds:.2f} s", className="note")
        return (
            {"run": rel, "dataset": dataset, "window": int(window)},
            options(r.channel_names),
            field if field in r.channel_names else r.channel_names[0],
            [{"label": figures.METHOD_LABELS.get(m, m), "value": m} for m in methods],
            method if method in methods else methods[0],
            H,
            step_marks(H),
            1,
            msg,
        )

    @app.callback(
        Output("rollout-frames", "figure"),
        Output("rollout-curve", "figure"),
        Input("rollout-state", "data"),
        Input("rollout-field", "value"),
        Input("rollout-method", "value"),
        Input("rollout-frame", "value"),
    )
    @guarded(FIGURE, FIGURE)
    def rollout_figures(state, field, method, frame):
        if not state or field is None or method is None:
            return figures.empty("pick an evaluate run"), figures.empty()
        run = run_at(state["run"])
        r = bench.rollout(run.path, run.metrics, state["dataset"], state["window"])
        c, k = r.channel_names.index(field), min(max(int(frame or 1), 1), r.truth.shape[0]) - 1  # step → index
        truth, pred = r.truth[:, c], r.predictions[method][:, c]
        errors = [p[:, c] - truth for p in r.predictions.values()]
        frames = figures.triptych(
            [(f"truth t+{k + 1}", truth[k]), (f"{figures.METHOD_LABELS.get(method, method)} t+{k + 1}", pred[k])],
            ("prediction − truth", pred[k] - truth[k]),
            (float(truth.min()), float(truth.max())),
            figures.symmetric_limit(*errors),  # one error scale for every method and step: comparable by eye
            field,
        )
        per_window = {m: v[:, c] for m, v in r.vrmse.items()}
        fields = ((run.metrics.get("vrmse") or {}).get(state["dataset"]) or {}).get("fields") or {}
        run_mean = {
            m: [v for _, v in sorted(by_h.items(), key=lambda kv: int(kv[0]))]
            for m, by_h in fields.get(field, {}).items()
        }
        return frames, figures.horizon_curve(per_window, run_mean, k, field)

    @app.callback(
        Output("rollout-timer", "disabled"),
        Output("rollout-play", "children"),
        Input("rollout-play", "n_clicks"),
        State("rollout-timer", "disabled"),
        prevent_initial_call=True,
    )
    def toggle_play(_, disabled):
        return (False, "⏸ pause") if disabled else (True, "▶ play")

    @app.callback(
        Output("rollout-frame", "value", allow_duplicate=True),
        Input("rollout-timer", "n_intervals"),
        State("rollout-frame", "value"),
        State("rollout-frame", "max"),
        prevent_initial_call=True,
    )
    def advance(_, step, last):
        return 1 if (step or 1) >= (last or 1) else (step or 1) + 1

    # ------------------------------------------------------------------ steering panel
    @app.callback(
        Output("steer-model", "value"),
        Output("steer-probe", "value"),
        Input("steer-direction", "value"),
        State("steer-model", "options"),
        State("steer-probe", "options"),
    )
    @guarded(no_update, no_update)
    def steer_defaults(direction, model_options, probe_options):
        """The model a direction was computed on, and a probe of that model for the same target."""
        if not direction:
            return no_update, no_update
        meta = next((m for p, m in find_directions(root) if p == root / direction), {})
        model = resolve_recorded(meta.get("checkpoint", ""), (root / direction).parent, root)
        model_rel = _rel_in(model, root)
        models = [o["value"] for o in model_options or []]
        try:
            target = infer_target(meta)
        except (PhysfmError, KeyError):  # selections that name no single parameter: any probe of the model
            target = None
        probe_rel = "none"
        for o in probe_options or []:
            if o["value"] == "none":
                continue
            m = run_at(o["value"]).metrics
            same = _rel_in(resolve_recorded(m.get("checkpoint", ""), root / o["value"], root), root) == model_rel
            if same and target in (None, m.get("target")):
                probe_rel = o["value"]
                break
        return (model_rel if model_rel in models else no_update), probe_rel

    @app.callback(
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
    def steer_prepare(model, direction, probe, window, horizon, field):
        if not (model and direction) or window is None:
            return None, [], None, html.Span("pick a model and a direction", className="note")
        state = {
            "model": model,
            "direction": direction,
            "probe": None if probe in (None, "none") else probe,
            "window": int(window),
            "horizon": min(max(int(horizon or 1), 1), MAX_STEER_FRAMES),
        }
        setup = _steer_setup(state)
        names = setup.pm.channel_names(setup.dataset)
        d = setup.direction.meta
        where = ", ".join(f"{k}={v}" for k, v in setup.meta.items() if k in ("source_file", "trajectory", "start"))
        msg = html.Span(
            f"{d.get('feature')} − {d.get('control')} at {', '.join(setup.direction.points)} "
            f"({setup.spatial_mode}); context {setup.dataset} {where}; {setup.horizon} generated token frame(s) per α",
            className="note",
        )
        return state, options(names), field if field in names else names[0], msg

    def inside(rel: str) -> Path:
        """``rel`` under the root (values come from the browser, which may send anything)."""
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.exists():
            raise ValueError(f"{rel}: not a file or folder under {root}")
        return path

    def _steer_setup(state: dict[str, Any]):
        return bench.steer_setup(
            inside(state["model"]),
            inside(state["direction"]),
            inside(state["probe"]) if state["probe"] else None,
            int(state["window"]),
            min(max(int(state["horizon"]), 1), MAX_STEER_FRAMES),
        )

    @app.callback(
        Output("steer-frames", "figure"),
        Output("steer-readout", "children"),
        Output("steer-dose", "figure"),
        Input("steer-state", "data"),
        Input("steer-alpha", "value"),
        Input("steer-field", "value"),
    )
    @guarded(FIGURE, ERROR, FIGURE)
    def steer_alpha(state, alpha, field):
        if not state or field is None:
            return figures.empty("pick a model and a direction"), "", figures.empty()
        setup = _steer_setup(state)
        alpha = float(alpha or 0.0)
        base = bench.steer(setup, 0.0)
        now = bench.steer(setup, alpha)
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
        parts = [f"α = {alpha:g}"]
        if now.probe_value is not None:
            parts.append(f"probe {target} = {now.probe_value:.4g} (α=0: {base.probe_value:.4g})")
        parts += [f"{k} = {v:.4g} (α=0: {base.statistics[k]:.4g})" for k, v in now.statistics.items()]
        parts.append("from the cache" if now.seconds == 0 else f"computed in {now.seconds:.2f} s")
        readout = html.Div(" · ".join(parts), id="steer-readout-text")
        points = [
            {
                "alpha": a,
                "probe": r.probe_value if r.probe_value is not None else float("nan"),
                "statistic": r.statistics[statistic],
            }
            for a, r in sorted(setup.results.items())
        ]
        return fig, readout, figures.dose_response(points, round(alpha, 6), target, statistic)

    # ------------------------------------------------------------------ tokenizer panel
    @app.callback(
        Output("tok-dataset", "options"),
        Output("tok-dataset", "value"),
        Output("tok-usage", "figure"),
        Input("tok-run", "value"),
    )
    @guarded([], None, FIGURE)
    def tok_datasets(rel):
        if not rel:
            return [], None, figures.empty("no tokenizer evaluation under this folder")
        m = run_at(rel).metrics
        names = sorted(m.get("datasets") or {})
        return options(names), names[0] if names else None, figures.code_usage(m)

    @app.callback(
        Output("tok-state", "data"),
        Output("tok-field", "options"),
        Output("tok-field", "value"),
        Output("tok-frame", "max"),
        Output("tok-frame", "marks"),
        Output("tok-msg", "children"),
        Input("tok-dataset", "value"),
        Input("tok-window", "value"),
        Input("tok-run", "value"),
        State("tok-field", "value"),
    )
    @guarded(None, [], None, 0, {}, ERROR)
    def tok_compute(dataset, window, rel, field):
        if not (rel and dataset) or window is None:
            return None, [], None, 0, {}, ""
        run = run_at(rel)
        r = bench.reconstruction(run.path, run.metrics, dataset, int(window))
        T = r.original.shape[0]
        scores = ", ".join(f"{c} {v:.3g}" for c, v in zip(r.channel_names, r.vrmse))
        msg = html.Span(f"VRMSE of this window's reconstruction: {scores}", className="note")
        state = {"run": rel, "dataset": dataset, "window": int(window)}
        field = field if field in r.channel_names else r.channel_names[0]
        return state, options(r.channel_names), field, T - 1, {i: str(i) for i in range(T)}, msg

    @app.callback(
        Output("tok-frames", "figure"),
        Input("tok-state", "data"),
        Input("tok-field", "value"),
        Input("tok-frame", "value"),
    )
    @guarded(FIGURE)
    def tok_figure(state, field, frame):
        if not state or field is None:
            return figures.empty("pick a tokenizer evaluation")
        run = run_at(state["run"])
        r = bench.reconstruction(run.path, run.metrics, state["dataset"], state["window"])
        c, k = r.channel_names.index(field), min(int(frame or 0), r.original.shape[0] - 1)
        orig, rec = r.original[:, c], r.reconstruction[:, c]
        return figures.triptych(
            [(f"original, frame {k}", orig[k]), (f"reconstruction, frame {k}", rec[k])],
            ("reconstruction − original", rec[k] - orig[k]),
            (float(orig.min()), float(orig.max())),
            figures.symmetric_limit(rec - orig),
            field,
        )

    # ------------------------------------------------------------------ probe
    @app.callback(Output("probe-r2", "figure"), Input("probe-run", "value"))
    @guarded(FIGURE)
    def probe_figure(rel):
        if not rel:
            return figures.empty("no probe run under this folder")
        return figures.probe_layers(run_at(rel).metrics)

    return app


def prefetch(root: Path, bench: Workbench) -> None:
    """Compute what the page opens with (the first rollout run's first window), so a browser opened a few
    seconds after the server starts finds the model loaded. Failures are left for the page to show."""
    try:
        run = next((r for r in discover_runs(root) if r.kind in ROLLOUT_KINDS and not r.error), None)
        datasets = sorted(run.metrics.get("n_windows") or {}) if run else []
        if run and datasets:
            bench.rollout(run.path, run.metrics, datasets[0], 0)
    except Exception as err:  # shown by the page when it asks for the same thing
        log.info("prefetch: %s", err)


def _rel_in(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    path = path.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else None


# ---------------------------------------------------------------------------------------------- layout
def run_card(run: Run) -> html.Component:
    if run.error:
        return error_card(f"{run.rel}: {run.error}")
    summary = html.Summary(
        [
            html.Span(run.kind, className="kind"),
            html.Span(run.rel, className="rel"),
            html.Span(run.date, className="date"),
            html.Span([html.Span(f"{label} {value}") for label, value in run.headline], className="headline"),
        ]
    )
    body = dcc.Markdown(link_figures(run.report, run.rel)) if run.report else html.Div("(no report.md)")
    return html.Details([summary, html.Div(body, className="report")], className="run", id=f"run-{run.rel}")


def _dropdown(id_: str, values: list[str], labels: list[str] | None = None, none: str | None = None):
    opts = options(values, labels) + ([{"label": none, "value": "none"}] if none else [])
    first = values[0] if values else ("none" if none else None)
    return dcc.Dropdown(id=id_, options=opts, value=first, clearable=False)


def page(root: Path) -> html.Div:
    """The whole page, built afresh on every load (new runs show up on reload)."""
    runs = discover_runs(root)
    by_kind = lambda kinds: [r.rel for r in runs if r.kind in kinds and not r.error]
    model_runs = [r for r in runs if r.kind in MODEL_KINDS and not r.error]
    directions = find_directions(root)
    direction_rels = [_rel_in(p, root) for p, _ in directions]
    direction_labels = [
        f"{rel} ({m.get('feature', '?')} − {m.get('control', '?')})" for rel, (_, m) in zip(direction_rels, directions)
    ]
    return html.Div(
        [
            html.H1("physfm view"),
            html.Div(f"{root} · {len(runs)} runs", className="note"),
            html.H2("Runs"),
            html.Div([run_card(r) for r in runs] or [html.Div("no runs here", className="note")], id="run-list"),
            html.H2("Rollouts"),
            html.Div(
                [
                    control("evaluate run", _dropdown("rollout-run", by_kind(ROLLOUT_KINDS)), wide=True),
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
                    html.Div(dcc.Graph(id="rollout-frames", config={"displaylogo": False}), className="grow"),
                    html.Div(dcc.Graph(id="rollout-curve", config={"displaylogo": False}), className="side"),
                ],
                className="row",
            ),
            html.Div(
                [
                    html.Button("▶ play", id="rollout-play", n_clicks=0),
                    html.Div(
                        dcc.Slider(id="rollout-frame", min=1, max=1, step=1, value=1, updatemode="drag"),
                        style={"flex": "1"},
                    ),
                ],
                className="controls",
                style={"alignItems": "center"},
            ),
            dcc.Interval(id="rollout-timer", interval=PLAY_INTERVAL_MS, disabled=True),
            dcc.Store(id="rollout-state"),
            html.H2("Steering"),
            html.Div(
                [
                    control(
                        "direction",
                        _dropdown("steer-direction", direction_rels, direction_labels),
                        wide=True,
                    ),
                    control("model", _dropdown("steer-model", [r.rel for r in model_runs]), wide=True),
                    control("probe (readout)", _dropdown("steer-probe", by_kind(("probe",)), none="none")),
                    control(
                        "context",
                        dcc.Dropdown(
                            id="steer-window",
                            options=[{"label": f"test window {i}", "value": i} for i in range(STEER_WINDOWS)],
                            value=0,
                            clearable=False,
                        ),
                    ),
                    control(
                        "token frames",
                        dcc.Input(
                            id="steer-horizon",
                            type="number",
                            min=1,
                            max=MAX_STEER_FRAMES,
                            step=1,
                            value=1,
                            debounce=True,
                        ),
                    ),
                    control("field", dcc.Dropdown(id="steer-field", clearable=False)),
                ],
                className="controls",
            ),
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
                    html.Div(dcc.Graph(id="steer-frames", config={"displaylogo": False}), className="grow"),
                    html.Div(dcc.Graph(id="steer-dose", config={"displaylogo": False}), className="side"),
                ],
                className="row",
            ),
            dcc.Store(id="steer-state"),
            html.H2("Tokenizer"),
            html.Div(
                [
                    control("tokenizer evaluation", _dropdown("tok-run", by_kind(("tokenizer-eval",))), wide=True),
                    control("dataset", dcc.Dropdown(id="tok-dataset", clearable=False)),
                    control(
                        "window",
                        dcc.Dropdown(
                            id="tok-window",
                            options=[{"label": f"window {i}", "value": i} for i in range(16)],
                            value=0,
                            clearable=False,
                        ),
                    ),
                    control("field", dcc.Dropdown(id="tok-field", clearable=False)),
                ],
                className="controls",
            ),
            html.Div(id="tok-msg"),
            html.Div(
                [
                    html.Div(
                        [
                            dcc.Graph(id="tok-frames", config={"displaylogo": False}),
                            dcc.Slider(id="tok-frame", min=0, max=0, step=1, value=0, updatemode="drag"),
                        ],
                        className="grow",
                    ),
                    html.Div(dcc.Graph(id="tok-usage", config={"displaylogo": False}), className="side"),
                ],
                className="row",
            ),
            dcc.Store(id="tok-state"),
            html.H2("Probe: R² per layer"),
            html.Div(
                [control("probe run", _dropdown("probe-run", by_kind(("probe",))), wide=True)], className="controls"
            ),
            dcc.Graph(id="probe-r2", config={"displaylogo": False}),
        ]
    )
