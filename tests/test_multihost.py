"""Two JAX processes (2 emulated CPU devices each) run one experiment as one SPMD program.

This exercises the multi-host path of ``filtrax run`` on one machine:
``jax.distributed.initialize`` from ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/
``JAX_PROCESS_ID``, a particle mesh over 4 devices on 2 processes, gathering shards that
live in the other process, and writes from process 0 only. It costs about two minutes on
two cores, so it runs only when ``FILTRAX_MULTIHOST=1`` (CI does not set it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr

pytestmark = pytest.mark.skipif(
    os.environ.get("FILTRAX_MULTIHOST") != "1", reason="set FILTRAX_MULTIHOST=1 to run"
)

SCRIPT = textwrap.dedent(
    """
    import sys
    from filtrax.experiments.config import load_config
    from filtrax.experiments.runner import run_experiment
    overrides = ["filter.particles=8", "run.cycles=2", "run.burn_in=0", "run.baseline=false"]
    if sys.argv[2] == "multi":
        overrides += ["parallel.distributed=true", "parallel.devices=0"]
    cfg = load_config("configs/lorenz96/wilks05.toml", overrides)
    run_experiment(cfg, sys.argv[1], quiet=True, report=False)
    import jax
    print("devices", len(jax.devices()), "processes", jax.process_count())
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_single_device_analysis(tmp_path):
    single = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "single"), "single"],
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    port = free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(tmp_path / "multi"), "multi"],
            env=dict(
                os.environ,
                JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
                XLA_FLAGS="--xla_force_host_platform_device_count=2",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in processes]
    for p, (out, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "devices 4 processes 2" in out
    expected = xr.open_zarr(tmp_path / "single" / "analysis.zarr", consolidated=False)["x"]
    actual = xr.open_zarr(tmp_path / "multi" / "analysis.zarr", consolidated=False)["x"]
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual.values, expected.values, rtol=0, atol=1e-5 * scale)
    assert (tmp_path / "multi" / "metrics.nc").exists()
