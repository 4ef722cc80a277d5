"""The ``physfm view`` page's building blocks: its style, the controls and cards every panel uses,
and the settings the panels share (each panel's own controls and callbacks are in
``physfm.view.panels``)."""

from __future__ import annotations

import re
from pathlib import Path

from dash import dcc, html

from physfm.view.runs import Run

ROLLOUT_KINDS = ("evaluate", "rollout")
MODEL_KINDS = ("pretrain", "finetune", "export")
ALPHA_MIN, ALPHA_MAX, ALPHA_STEP = -2.0, 2.0, 0.25
PLAY_INTERVAL_MS = 700
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


# ----------------------------------------------------------------------------------------------
# helpers
def error_card(message: str) -> html.Div:
    return html.Div(message, className="error-card")


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


def rel_in(path: Path | None, root: Path) -> str | None:
    """``path`` relative to ``root`` ("/"-separated), or None when it is not under it."""
    if path is None:
        return None
    path = path.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else None


def run_card(run: Run) -> html.Component:
    if run.error:
        return error_card(f"{run.rel}: {run.error}")
    summary = html.Summary(
        [
            html.Span(run.kind, className="kind"),
            html.Span(run.rel, className="rel"),
            html.Span(run.date, className="date"),
            html.Span(
                [html.Span(f"{label} {value}") for label, value in run.headline],
                className="headline",
            ),
        ]
    )
    body = (
        dcc.Markdown(link_figures(run.report, run.rel))
        if run.report
        else html.Div("(no report.md)")
    )
    return html.Details(
        [summary, html.Div(body, className="report")], className="run", id=f"run-{run.rel}"
    )


def dropdown(id_: str, values: list[str], labels: list[str] | None = None, none: str | None = None):
    opts = options(values, labels) + ([{"label": none, "value": "none"}] if none else [])
    first = values[0] if values else ("none" if none else None)
    return dcc.Dropdown(id=id_, options=opts, value=first, clearable=False)
