"""``physfm view``: a local web page over a folder of runs — run list and reports, a rollout viewer,
a steering panel with an α slider, the tokenizer's reconstructions and the probe's R² per layer
(``physfm.view.app``)."""
