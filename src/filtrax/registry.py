"""Registries: one table per family of interchangeable parts (samplers, guidance, filters …).

A registry maps a name, as a config or the command line spells it, to what builds the part.
The config's allowed values are a registry's names, so adding a part is one registration:
nothing else lists the names. The core itself takes the built values, never names.

    >>> COLOURS = Registry("colour")
    >>> @COLOURS.register("red")
    ... def _red():
    ...     return (255, 0, 0)
    >>> COLOURS["red"](), COLOURS.names()
    ((255, 0, 0), ('red',))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one family, each bound once to its entry (a builder, a function, a value).

    Attributes:
        family: what the names select, as the config spells it (e.g. ``"sampler.name"``);
            it opens the error for an unknown name.
    """

    def __init__(self, family: str):
        self.family = family
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """Bind ``name`` to ``entry``; without ``entry``, a decorator that binds what it wraps."""
        if entry is not None:
            self._add(name, entry)
            return entry

        def decorate(wrapped: T) -> T:
            self._add(name, wrapped)
            return wrapped

        return decorate

    def _add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.family}: {name!r} is registered already")
        self._entries[name] = entry

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"{self.family} = {name!r} is not one of: {', '.join(sorted(self._entries))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())


Builder = Callable[..., T]
