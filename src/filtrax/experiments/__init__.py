"""Config-driven assimilation experiments: a validated TOML schema, a factory and a runner."""
