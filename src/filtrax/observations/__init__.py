"""Observation operators and the diagonal Gaussian observation model."""
