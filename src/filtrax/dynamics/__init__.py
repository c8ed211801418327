"""Known-equation models: truth generation for twin experiments and exact oracles."""
