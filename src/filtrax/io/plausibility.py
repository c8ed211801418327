"""Plausible ranges of physical values by unit: a unit mistake is refused, not assimilated.

A temperature in °C given to a field in K, or a pressure in hPa given to one in Pa, is
finite and passes every other check; assimilated, it drags the ensemble tens of kelvin (or
a hundredfold) away and the run looks like a filter failure. The ranges below are wide
(far beyond what Earth-like atmospheres reach) and aimed at exactly those mistakes:

=========  =====================  ==========================================================
unit       plausible range        what falls outside
=========  =====================  ==========================================================
K          150 to 350             °C (−90 … 60)
Pa         2·10^4 to 1.2·10^5     hPa (~1000) and kPa (~100)
m s-1      −200 to 200            km/h and knots at jet speeds, cm/s
=========  =====================  ==========================================================

Geopotential (m2 s-2) has no range: geopotential height in m overlaps it over the lower
troposphere, so no threshold would tell the two apart. Units not in the table (``"1"``,
normalised fields) are not checked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: ``unit: (low, high, likely mistake)``; values outside ``[low, high]`` are refused.
PLAUSIBLE_RANGES: dict[str, tuple[float, float, str]] = {
    "K": (150.0, 350.0, "°C instead of K?"),
    "Pa": (2.0e4, 1.2e5, "hPa instead of Pa?"),
    "m s-1": (-200.0, 200.0, "km/h or knots instead of m s-1?"),
}


def _refusal(source: str, what: str, value: float, unit: str) -> ValueError:
    low, high, mistake = PLAUSIBLE_RANGES[unit]
    return ValueError(
        f"{source}: {what} is {value:g} {unit}, outside the plausible range {low:g} to "
        f"{high:g} {unit} ({mistake} thresholds: filtrax.io.plausibility)"
    )


def check_frames(
    frames: np.ndarray, units: Sequence[str], channel_labels: Sequence[str], source: str
) -> None:
    """``frames (time, channel, ...)``: every channel's finite values within its unit's range."""
    frames = np.asarray(frames)
    for c, unit in enumerate(units):
        if unit not in PLAUSIBLE_RANGES:
            continue
        low, high, _ = PLAUSIBLE_RANGES[unit]
        values = frames[:, c]
        outside = np.isfinite(values) & ((values < low) | (values > high))
        if outside.any():
            first = np.argwhere(outside)[0]
            value = float(values[tuple(first)])
            raise _refusal(source, f"{channel_labels[c]} at time index {first[0]}", value, unit)


def check_observations(
    values: np.ndarray,
    observation_model,
    units: Sequence[str],
    labels: Sequence[str],
    source: str,
) -> None:
    """``values (cycle, obs)`` of ``observation_model`` on a gridded frame ``(channel, ...)``.

    Which unit an observation has comes from the channels it reads
    (:meth:`~filtrax.observations.model.ObservationModel.reads_channels`).
    """
    values = np.asarray(values, np.float64)
    for unit in sorted(set(units) & set(PLAUSIBLE_RANGES)):
        reads_unit = observation_model.reads_channels([c for c, u in enumerate(units) if u == unit])
        low, high, _ = PLAUSIBLE_RANGES[unit]
        outside = reads_unit[None] & np.isfinite(values) & ((values < low) | (values > high))
        if outside.any():
            k, i = (int(v) for v in np.argwhere(outside)[0])
            raise _refusal(source, f"{labels[i]} at cycle {k}", float(values[k, i]), unit)
