"""Interpretability: hook points, activation capture, linear probes, concept directions and
steering."""
