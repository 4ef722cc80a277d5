"""The probe panel: a probe run's R² per layer, beside its baselines."""

from __future__ import annotations

from dash import Input, Output, dcc, html

from physfm.view import figures
from physfm.view.layout import control, dropdown
from physfm.view.panels.site import FIGURE, Site, callback, guarded
from physfm.view.runs import Run


def layout(runs: list[Run]) -> list:
    rels = [r.rel for r in runs if r.kind == "probe" and not r.error]
    return [
        html.H2("Probe: R² per layer"),
        html.Div(
            [control("probe run", dropdown("probe-run", rels), wide=True)], className="controls"
        ),
        dcc.Graph(id="probe-r2", config={"displaylogo": False}),
    ]


class ProbePanel:
    def __init__(self, site: Site):
        self.site = site

    @callback(Output("probe-r2", "figure"), Input("probe-run", "value"))
    @guarded(FIGURE)
    def probe_figure(self, rel):
        if not rel:
            return figures.empty("no probe run under this folder")
        return figures.probe_layers(self.site.run_at(rel).metrics)
