"""The run list: every run under the folder with its kind, date and headline figures, its report.md
folded under it (a run that cannot be read shows as an error card)."""

from __future__ import annotations

from pathlib import Path

from dash import html

from physfm.view.layout import run_card
from physfm.view.runs import Run


def layout(runs: list[Run], root: Path) -> list:
    return [
        html.H1("physfm view"),
        html.Div(f"{root} · {len(runs)} runs", className="note"),
        html.H2("Runs"),
        html.Div(
            [run_card(r) for r in runs] or [html.Div("no runs here", className="note")],
            id="run-list",
        ),
    ]
