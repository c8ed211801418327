"""Two-scale Lorenz-96 data sets: the slow variables as xarray data, and their files.

The integration is :func:`filtrax.dynamics.lorenz96.sample_slow_trajectories`; this module
labels its arrays (``trajectory``, ``time``, ``site``) and writes them to netCDF or zarr.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from .._typing import Key
from ..dynamics.lorenz96 import DEFAULT_DT, TwoScaleLorenz96, sample_slow_trajectories


def generate_dataset(
    model: TwoScaleLorenz96,
    key: Key,
    *,
    dt_integration: float = DEFAULT_DT,
    sample_every: float,
    spin_up_time: float,
    num_samples: int,
    num_trajectories: int = 1,
    dtype=None,
) -> xr.Dataset:
    """:func:`~filtrax.dynamics.lorenz96.sample_slow_trajectories` as an :class:`xarray.Dataset`.

    ``X`` has dims ``(trajectory, time, site)``; ``time`` is model time since the initial
    draw, ``spin_up_time + i * sample_every``, and the attributes record the parameters,
    the step counts and the key (see that function for every argument).
    """
    X, time, attrs = sample_slow_trajectories(
        model,
        key,
        dt_integration=dt_integration,
        sample_every=sample_every,
        spin_up_time=spin_up_time,
        num_samples=num_samples,
        num_trajectories=num_trajectories,
        dtype=dtype,
    )
    return xr.Dataset(
        {"X": (("trajectory", "time", "site"), X)},
        coords={
            "trajectory": np.arange(X.shape[0]),
            "time": time,
            "site": np.arange(X.shape[2]),
        },
        attrs=attrs,
    )


def write_dataset(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` to ``.nc`` (netCDF4 engine) or ``.zarr`` (``consolidated=False``, overwrite)."""
    path = Path(path)
    if path.suffix == ".nc":
        ds.to_netcdf(path, engine="netcdf4")
    elif path.suffix == ".zarr":
        ds.to_zarr(path, mode="w", consolidated=False)
    else:
        raise ValueError(f"path suffix must be '.nc' or '.zarr', got {path.suffix!r} ({path})")
    return path
