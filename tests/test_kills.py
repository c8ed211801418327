"""A run killed at any chosen moment resumes to the same outputs, bit for bit.

The kill is an exception that no ``except Exception`` catches, raised at the event, inside
the process: the files are left exactly as a ``kill -9`` at that line would leave them
(every write of a run is a complete file replaced atomically, or a zarr region rewritten
on resume). ``tests/test_runs.py`` kills a real subprocess with SIGKILL once; this module
aims at the moments in between.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import filtrax.experiments.run_directory as run_directory
import filtrax.experiments.runner as runner
import filtrax.io.atomic as atomic
from filtrax.experiments.config import load_config
from test_runs import write_config

CYCLES = 3


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way handles it."""


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    # With the observation-space diagnostics: they are checkpointed too.
    return load_config(
        write_config(tmp_path_factory.mktemp("config"), cycles=CYCLES),
        ["run.observation_diagnostics=true"],
    )


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory):
    return runner.run_experiment(config, tmp_path_factory.mktemp("reference") / "run", quiet=True)


def after_config_toml(monkeypatch):
    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(run_directory, "record_inputs", killed)


def on_write_cycle(member: str, cycle: int, *, partial: bool):
    """Kill at ``member``'s write of ``cycle``: after writing garbage there (``partial``,
    a zarr region half written) or before writing it."""

    def arm(monkeypatch):
        write = runner._write_cycle

        def maybe_killed(store, experiment, k, ensemble):
            if Path(store).name == f"{member}.zarr" and k == cycle:
                if partial:
                    write(store, experiment, k, np.full_like(ensemble, np.nan))
                raise Killed
            write(store, experiment, k, ensemble)

        monkeypatch.setattr(runner, "_write_cycle", maybe_killed)

    return arm


def before_checkpoint_replace(member: str, nth: int):
    """Kill after a checkpoint's temporary file is written, before its ``os.replace``."""

    def arm(monkeypatch):
        replace, seen = os.replace, []

        def maybe_killed(source, target):
            if Path(target).name == f"{member}.npz":
                seen.append(target)
                if len(seen) == nth:
                    raise Killed
            replace(source, target)

        monkeypatch.setattr(atomic.os, "replace", maybe_killed)

    return arm


def during_metrics(monkeypatch):
    """Kill while metrics.nc is being written: its temporary holds half a file."""
    write = runner.atomic_netcdf

    def maybe_killed(dataset, path):
        if Path(path).name == "metrics.nc":
            Path(str(path) + ".tmp").write_bytes(b"\x89HDF\r\n\x1a\n half a file")
            raise Killed
        write(dataset, path)

    monkeypatch.setattr(runner, "atomic_netcdf", maybe_killed)


EVENTS = {
    "after config.toml": after_config_toml,
    "during the first zarr write": on_write_cycle("analysis", 0, partial=True),
    "during the baseline": on_write_cycle("baseline", 1, partial=False),
    "during a checkpoint's replace": before_checkpoint_replace("analysis", 2),
    "during metrics.nc": during_metrics,
}


def stored(run_dir: Path) -> dict[str, np.ndarray]:
    """Every number a run keeps, but the timings."""
    values = {}
    for name in ("analysis.zarr", "baseline.zarr"):
        with xr.open_zarr(run_dir / name) as dataset:
            for variable in dataset.data_vars:
                values[f"{name}/{variable}"] = dataset[variable].values
    for name in ("metrics.nc", "observations.nc", "truth.nc"):
        with xr.open_dataset(run_dir / name) as dataset:
            for variable in dataset.data_vars:
                if "seconds" not in str(variable):
                    values[f"{name}/{variable}"] = dataset[variable].values
    for name in ("analysis", "baseline"):
        with np.load(run_dir / "checkpoints" / f"{name}.npz") as data:
            values.update(
                {f"{name}.npz/{k}": data[k] for k in data.files if k != "history_seconds"}
            )
    return values


@pytest.mark.parametrize("event", list(EVENTS))
def test_a_kill_then_resume_gives_the_uninterrupted_outputs(
    event, config, reference, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        EVENTS[event](patch)
        with pytest.raises(Killed):
            runner.run_experiment(config, run_dir, quiet=True)
    assert (run_dir / "config.toml").exists()  # every kill leaves a resumable directory
    runner.run_experiment(config, run_dir, resume=True, quiet=True)
    expected, found = stored(reference), stored(run_dir)
    assert sorted(found) == sorted(expected)
    for key, value in expected.items():
        assert np.array_equal(found[key], value, equal_nan=True), key
    # A temporary the kill left behind is replaced by the resumed write of the same file.
    assert not list(run_dir.rglob("*.tmp"))
    shutil.rmtree(run_dir)


def test_resuming_a_finished_run_rewrites_nothing_unless_outputs_are_stale(
    config, reference, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    before = {p: p.read_bytes() for p in (run_dir / "metrics.nc", run_dir / "report.md")}
    with monkeypatch.context() as patch:
        # A finished run returns from its checkpoints' headers: it builds nothing (issue 28).
        patch.setattr(runner, "build_experiment", lambda config: pytest.fail("built"))
        runner.run_experiment(config, run_dir, resume=True, quiet=True)
    assert all(p.read_bytes() == content for p, content in before.items())
    # A checkpoint newer than metrics.nc (a kill between the last cycle and the scores):
    # scored and reported again.
    checkpoint = run_dir / "checkpoints" / "analysis.npz"
    later = (run_dir / "metrics.nc").stat().st_mtime + 10
    os.utime(checkpoint, (later, later))
    runner.run_experiment(config, run_dir, resume=True, quiet=True)
    assert (run_dir / "metrics.nc").read_bytes() != before[run_dir / "metrics.nc"]


def _without_scores(checkpoint: Path) -> None:
    """Rewrite ``checkpoint`` as a run from before the scores were checkpointed wrote it."""
    from filtrax.experiments.scoring import SCORE_FIELDS

    with np.load(checkpoint, allow_pickle=False) as data:
        kept = {k: data[k] for k in data.files if k.removeprefix("history_") not in SCORE_FIELDS}
        assert len(kept) == len(data.files) - len(SCORE_FIELDS)
    atomic.atomic_savez(checkpoint, kept)


def test_checkpoints_from_before_the_scores_resume_and_score_from_zarr(
    config, reference, tmp_path, monkeypatch
):
    """Each cycle's scores are kept with the checkpoint and metrics.nc is assembled from
    them. A run directory written before that has checkpoints without them: a killed run
    scores its finished cycles once from zarr when it resumes, and a finished one when its
    metrics are rewritten, to the same numbers bit for bit."""
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        before_checkpoint_replace("analysis", 2)(patch)
        with pytest.raises(Killed):
            runner.run_experiment(config, run_dir, quiet=True)
    for checkpoint in (run_dir / "checkpoints").glob("*.npz"):
        _without_scores(checkpoint)
    runner.run_experiment(config, run_dir, resume=True, quiet=True)
    expected, found = stored(reference), stored(run_dir)
    assert sorted(found) == sorted(expected)
    for key, value in expected.items():
        assert np.array_equal(found[key], value, equal_nan=True), key

    finished = tmp_path / "finished"
    shutil.copytree(reference, finished)
    for checkpoint in (finished / "checkpoints").glob("*.npz"):
        _without_scores(checkpoint)
    (finished / "metrics.nc").unlink()
    runner.run_experiment(config, finished, resume=True, quiet=True)
    found = stored(finished)
    scored = [key for key in expected if key.startswith("metrics.nc/")]
    assert "metrics.nc/rmse" in scored and "metrics.nc/rank_histogram" in scored
    for key in scored:
        assert np.array_equal(found[key], expected[key], equal_nan=True), key
