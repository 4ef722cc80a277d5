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
import time
from pathlib import Path
from typing import Any

from dash import Dash, Input, Output, State, callback_context, html, no_update
from flask import abort, request, send_file

from data_pipelines.errors import PhysfmError
from physfm.interp.steer_rollout import infer_target
from physfm.view import figures
from physfm.view.compute import Workbench
from physfm.view.layout import (
    INDEX,
    MAX_STEER_FRAMES,
    ROLLOUT_KINDS,
    error_card,
    options,
    page,
    rel_in,
    step_marks,
)
from physfm.view.runs import Run, discover_runs, find_directions, read_run, resolve_recorded, safe_file

log = logging.getLogger("physfm.view")

FILES = "/files/"
SLOW_CALLBACK_S = 0.5


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
        # A run's first view shows what a user gets by default (evaluate's default_method, e.g. the refined
        # model); a method picked by hand stays picked across windows.
        default = run.metrics.get("default_method")
        first = default if default in methods else methods[0]
        H = r.truth.shape[0]
        where = ", ".join(f"{k}={v}" for k, v in r.meta.items() if k in ("source_file", "trajectory", "start"))
        msg = html.Span(f"{dataset} window {window} ({where}); computed in {r.seconds:.2f} s", className="note")
        return (
            {"run": rel, "dataset": dataset, "window": int(window)},
            options(r.channel_names),
            field if field in r.channel_names else r.channel_names[0],
            [{"label": figures.METHOD_LABELS.get(m, m), "value": m} for m in methods],
            method if method in methods and callback_context.triggered_id != "rollout-run" else first,
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
        run_mean = {m: {int(h): v for h, v in by_h.items()} for m, by_h in fields.get(field, {}).items()}
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
        model_rel = rel_in(model, root)
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
            same = rel_in(resolve_recorded(m.get("checkpoint", ""), root / o["value"], root), root) == model_rel
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
