"""Evaluation: held-out windows, scoring against the baselines (VRMSE), figures, physical
statistics."""
