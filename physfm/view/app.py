"""The ``physfm view`` page: a Dash app over every run under RUNS_DIR.

Dash (Plotly's framework for analytical web apps) serves its JavaScript and CSS itself
(``serve_locally``), so the page works with no network; its callbacks run on the server, where the
models are. Sections: the run list (kind, date, headline figures, report.md), the rollout viewer,
the steering panel, the tokenizer panel and the probe's R² per layer. Files of the runs (the
reports' figures) come from ``/files/<path>``, which serves only regular files under RUNS_DIR and
answers 404 (logged) to anything else.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dash import Dash, html
from flask import abort, request, send_file

from physfm.view.compute import Workbench
from physfm.view.layout import INDEX, ROLLOUT_KINDS
from physfm.view.panels import probe, rollout, run_list, steering, tokenizer
from physfm.view.panels.site import Site, register
from physfm.view.runs import discover_runs, safe_file

log = logging.getLogger("physfm.view")

FILES = "/files/"


def page(root: Path) -> html.Div:
    """The whole page, built afresh on every load (new runs show up on reload)."""
    runs = discover_runs(root)
    return html.Div(
        [
            *run_list.layout(runs, root),
            *rollout.layout(runs),
            *steering.layout(runs, root),
            *tokenizer.layout(runs),
            *probe.layout(runs),
        ]
    )


def create_app(root: str | Path, workbench: Workbench | None = None) -> Dash:
    root = Path(root).resolve()
    site = Site(root, workbench or Workbench(root))
    app = Dash(__name__, title="physfm view", update_title=None, serve_locally=True)
    app.index_string = INDEX
    app.server.before_request(lambda: serve_file(root))
    app.layout = lambda: page(root)
    for panel in (
        rollout.RolloutPanel(site),
        steering.SteeringPanel(site),
        tokenizer.TokenizerPanel(site),
        probe.ProbePanel(site),
    ):
        register(app, panel)
    return app


def serve_file(root: Path):
    """/files/<path under the root>. A hook rather than a route: a route's path converter does not
    match "/files//etc/passwd", which would then fall through to Dash's catch-all page instead of a
    404."""
    # Dash would answer with its page
    if ".." in request.path.split("/") or request.path.startswith("//"):
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


def prefetch(root: Path, bench: Workbench) -> None:
    """Compute what the page opens with (the first rollout run's first window), so a browser opened
    a few seconds after the server starts finds the model loaded. Failures are left for the page to
    show."""
    try:
        run = next(
            (r for r in discover_runs(root) if r.kind in ROLLOUT_KINDS and not r.error), None
        )
        datasets = sorted(run.metrics.get("n_windows") or {}) if run else []
        if run and datasets:
            bench.rollout(run.path, run.metrics, datasets[0], 0)
    except Exception as err:  # shown by the page when it asks for the same thing
        log.info("prefetch: %s", err)
