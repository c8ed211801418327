"""The static description of a gridded model state, and the channel layout of its frames.

A gridded frame is an array of shape ``(channel, lat, lon)``. Each channel is one
``(variable, level)`` pair; surface variables have ``level = None``. Latitudes are in
degrees north (ascending or descending), longitudes in degrees east on a regular,
periodic grid ``[0, 360)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Channel:
    variable: str
    level: float | None = None

    def label(self) -> str:
        return self.variable if self.level is None else f"{self.variable}@{self.level:g}"


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """Latitudes, longitudes and channels of a gridded state (hashable, static).

    Attributes:
        latitudes: degrees north, strictly monotonic, within [-90, 90].
        longitudes: degrees east, regular spacing, within [0, 360).
        channels: the ``(variable, level)`` of each channel, in frame order.
        level_name: the name and meaning of the level coordinate (e.g. ``"sigma"``).
    """

    latitudes: tuple[float, ...]
    longitudes: tuple[float, ...]
    channels: tuple[Channel, ...]
    level_name: str = "level"

    def __post_init__(self) -> None:
        lat = np.asarray(self.latitudes, dtype=float)
        lon = np.asarray(self.longitudes, dtype=float)
        if (
            lat.ndim != 1
            or lat.size < 2
            or not (np.all(np.diff(lat) > 0) or np.all(np.diff(lat) < 0))
        ):
            raise ValueError("GridSpec.latitudes must be strictly monotonic with >= 2 entries")
        if np.any(np.abs(lat) > 90):
            raise ValueError(
                f"GridSpec.latitudes must lie in [-90, 90], got {lat.min()}..{lat.max()}"
            )
        if lon.ndim != 1 or lon.size < 2 or np.any(lon < 0) or np.any(lon >= 360):
            raise ValueError("GridSpec.longitudes must lie in [0, 360) with >= 2 entries")
        spacing = np.diff(lon)
        if not np.allclose(spacing, 360.0 / lon.size):
            raise ValueError(
                "GridSpec.longitudes must be regular and cover the globe (spacing 360/nlon)"
            )
        if not self.channels:
            raise ValueError("GridSpec.channels is empty")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("GridSpec.channels has duplicates")

    @classmethod
    def regular(
        cls,
        num_lat: int,
        num_lon: int,
        channels: Sequence[Channel],
        *,
        level_name: str = "level",
    ) -> GridSpec:
        """An equiangular grid with cell-centred latitudes (no pole points)."""
        dlat = 180.0 / num_lat
        lat = -90.0 + dlat * (np.arange(num_lat) + 0.5)
        lon = np.arange(num_lon) * (360.0 / num_lon)
        return cls(tuple(lat.tolist()), tuple(lon.tolist()), tuple(channels), level_name)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.channels), len(self.latitudes), len(self.longitudes))

    @property
    def variables(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for c in self.channels:
            seen.setdefault(c.variable, None)
        return tuple(seen)

    def levels_of(self, variable: str) -> tuple[float | None, ...]:
        return tuple(c.level for c in self.channels if c.variable == variable)

    def channel_index(self, variable: str, level: float | None = None) -> int:
        """The channel of ``(variable, level)``; the error lists what is available."""
        for i, c in enumerate(self.channels):
            if c.variable == variable and (
                c.level == level
                or (c.level is not None and level is not None and np.isclose(c.level, level))
            ):
                return i
        if variable not in self.variables:
            raise ValueError(
                f"unknown variable {variable!r}; available: {', '.join(self.variables)}"
            )
        levels = ", ".join("surface" if v is None else f"{v:g}" for v in self.levels_of(variable))
        raise ValueError(
            f"variable {variable!r} has no level {level!r}; available {self.level_name}s: {levels}"
        )

    def difference(self, other: GridSpec, *, atol_degrees: float = 1e-6) -> str | None:
        """What differs from ``other`` (``None`` if nothing): channels and level name exactly,
        coordinates to ``atol_degrees``, since a rerun on another machine may move a
        latitude by a rounding error."""
        for name in ("latitudes", "longitudes"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if len(mine) != len(theirs):
                return f"{len(mine)} {name} against {len(theirs)}"
            worst = float(np.max(np.abs(np.subtract(mine, theirs))))
            if worst > atol_degrees:
                return f"{name} differ by up to {worst:g} degrees"
        if self.channels != other.channels:
            ours = ", ".join(c.label() for c in self.channels)
            return f"channels {ours} against {', '.join(c.label() for c in other.channels)}"
        if self.level_name != other.level_name:
            return f"level name {self.level_name!r} against {other.level_name!r}"
        return None

    def area_weights(self) -> np.ndarray:
        """cos(latitude) weights normalised to mean 1 over the grid, shape ``(lat, lon)``."""
        w = np.cos(np.deg2rad(np.asarray(self.latitudes)))
        w = w / w.mean()
        return np.broadcast_to(w[:, None], (len(self.latitudes), len(self.longitudes))).copy()
