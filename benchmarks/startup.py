"""Time to the first cycle, cold and with a warm compilation cache (issue 28).

For ``make demo``'s config (the 32 x 64 Held-Suarez FA-APF) and the Gaussian-field demo,
each run twice in fresh processes with two cycles: first with an empty compilation cache
(``FILTRAX_CACHE_DIR`` a new temporary folder: cold), then again with the cache the first
run filled (warm). It prints what ``metrics.nc`` records of each invocation (the build:
reading inputs and loading the emulator; each ensemble's first cycle and the part of it spent
compiling; the time from the build's start to the end of the first cycle) and the process's
wall time, which adds the imports and the scoring and report after the cycles. Last, the
wall time of ``filtrax run --resume`` on the finished warm run, which has nothing to do::

    .venv/bin/python benchmarks/startup.py
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
GAUSSIAN_FIELD = (
    "run configs/gaussian_field/demo.toml --set run.cycles=2 --set run.burn_in=0 --quiet"
)
CASES = {
    "make demo (heldsuarez 32x64, N=16)": [sys.executable, "-m", "filtrax.demo", "--cycles", "2"],
    "gaussian_field demo": [sys.executable, "-m", "filtrax.cli", *GAUSSIAN_FIELD.split()],
}


def invocation(command: list[str], out: Path, cache: Path) -> dict[str, float]:
    env = {**os.environ, "FILTRAX_CACHE_DIR": str(cache)}
    tic = time.perf_counter()
    subprocess.run([*command, "--out", str(out)], cwd=ROOT, env=env, check=True,
                   capture_output=True)  # fmt: skip
    wall = time.perf_counter() - tic
    with xr.open_dataset(out / "metrics.nc") as metrics:
        first = dict(zip(metrics.ensemble.values, metrics.seconds_first_cycle.values, strict=True))
        compiling = dict(
            zip(metrics.ensemble.values, metrics.seconds_compiling.values, strict=True)
        )
        return {
            "build": float(metrics.seconds_build),
            "free first": float(first.get("baseline", float("nan"))),
            "filter first": float(first["analysis"]),
            "filter compiling": float(compiling["analysis"]),
            "to first cycle": float(metrics.seconds_to_first_cycle),
            "process": wall,
        }


def resumed(run_dir: Path, cache: Path) -> float:
    """Wall seconds of ``filtrax run --resume`` on a finished run (nothing left to do)."""
    env = {**os.environ, "FILTRAX_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "filtrax.cli", "run", str(run_dir / "config.toml"),
               "--out", str(run_dir), "--resume", "--quiet"]  # fmt: skip
    tic = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - tic


def main() -> None:
    print(f"{platform.node()}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"{platform.python_version()}")  # fmt: skip
    columns = ["build", "free first", "filter first", "filter compiling", "to first cycle",
               "process"]  # fmt: skip
    print(f"{'config':38s} {'cache':6s} " + " ".join(f"{c:>16s}" for c in columns))
    for name, command in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache"
            for state, out in (("cold", "cold"), ("warm", "warm")):
                row = invocation(command, Path(tmp) / out, cache)
                cells = " ".join(f"{row[c]:16.1f}" for c in columns)
                print(f"{name:38s} {state:6s} {cells}", flush=True)
            seconds = resumed(Path(tmp) / "warm", cache)
            print(f"{name:38s} {'resume':6s} {'':>84s} {seconds:16.1f}", flush=True)
    print("seconds; 'to first cycle' counts from the build's start (after the imports) to the "
          "end of the first ensemble's first cycle; 'resume' is the process's wall time of "
          "`filtrax run --resume` on the finished warm run")  # fmt: skip


if __name__ == "__main__":
    main()
