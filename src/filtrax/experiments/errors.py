"""The errors that bad input raises, apart from the schema so that every layer can raise them.

The command line turns an :class:`InputError` into one ``error: …`` line and exit code 2;
anything else that escapes is a bug and keeps its traceback (``filtrax --debug`` keeps it
for these too).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: the message names the file or field, the value found and
    what was expected."""


class ConfigError(InputError):
    """An invalid config: the message names the dotted key, the value and what is allowed."""


class RunDirectoryError(InputError):
    """The run directory cannot be used as asked (exists, belongs to another config, or
    holds damaged files)."""
