"""The configuration error, apart from the schema so that the builders can raise it too."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid config: the message names the dotted key, the value and what is allowed."""
