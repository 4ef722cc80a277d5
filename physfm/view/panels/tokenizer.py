"""The tokenizer panel: a tokenizer evaluation's windows, original | reconstruction | error per
frame, and the codebook's usage."""

from __future__ import annotations

from dash import Input, Output, State, dcc, html

from physfm.view import figures
from physfm.view.layout import control, dropdown, options
from physfm.view.panels.site import ERROR, FIGURE, Site, callback, guarded
from physfm.view.runs import Run

N_WINDOWS = 16  # windows offered for a reconstruction


def layout(runs: list[Run]) -> list:
    rels = [r.rel for r in runs if r.kind == "tokenizer-eval" and not r.error]
    windows = [{"label": f"window {i}", "value": i} for i in range(N_WINDOWS)]
    return [
        html.H2("Tokenizer"),
        html.Div(
            [
                control("tokenizer evaluation", dropdown("tok-run", rels), wide=True),
                control("dataset", dcc.Dropdown(id="tok-dataset", clearable=False)),
                control(
                    "window",
                    dcc.Dropdown(id="tok-window", options=windows, value=0, clearable=False),
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
                        dcc.Slider(
                            id="tok-frame", min=0, max=0, step=1, value=0, updatemode="drag"
                        ),
                    ],
                    className="grow",
                ),
                html.Div(
                    dcc.Graph(id="tok-usage", config={"displaylogo": False}), className="side"
                ),
            ],
            className="row",
        ),
        dcc.Store(id="tok-state"),
    ]


class TokenizerPanel:
    def __init__(self, site: Site):
        self.site = site

    @callback(
        Output("tok-dataset", "options"),
        Output("tok-dataset", "value"),
        Output("tok-usage", "figure"),
        Input("tok-run", "value"),
    )
    @guarded([], None, FIGURE)
    def tok_datasets(self, rel):
        if not rel:
            return [], None, figures.empty("no tokenizer evaluation under this folder")
        m = self.site.run_at(rel).metrics
        names = sorted(m.get("datasets") or {})
        return options(names), names[0] if names else None, figures.code_usage(m)

    @callback(
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
    def tok_compute(self, dataset, window, rel, field):
        if not (rel and dataset) or window is None:
            return None, [], None, 0, {}, ""
        run = self.site.run_at(rel)
        r = self.site.bench.reconstruction(run.path, run.metrics, dataset, int(window))
        T = r.original.shape[0]
        scores = ", ".join(f"{c} {v:.3g}" for c, v in zip(r.channel_names, r.vrmse))
        msg = html.Span(f"VRMSE of this window's reconstruction: {scores}", className="note")
        state = {"run": rel, "dataset": dataset, "window": int(window)}
        field = field if field in r.channel_names else r.channel_names[0]
        return state, options(r.channel_names), field, T - 1, {i: str(i) for i in range(T)}, msg

    @callback(
        Output("tok-frames", "figure"),
        Input("tok-state", "data"),
        Input("tok-field", "value"),
        Input("tok-frame", "value"),
    )
    @guarded(FIGURE)
    def tok_figure(self, state, field, frame):
        if not state or field is None:
            return figures.empty("pick a tokenizer evaluation")
        run = self.site.run_at(state["run"])
        r = self.site.bench.reconstruction(run.path, run.metrics, state["dataset"], state["window"])
        c, k = r.channel_names.index(field), min(int(frame or 0), r.original.shape[0] - 1)
        orig, rec = r.original[:, c], r.reconstruction[:, c]
        return figures.triptych(
            [(f"original, frame {k}", orig[k]), (f"reconstruction, frame {k}", rec[k])],
            ("reconstruction − original", rec[k] - orig[k]),
            (float(orig.min()), float(orig.max())),
            figures.symmetric_limit(rec - orig),
            field,
        )
