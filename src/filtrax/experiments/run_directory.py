"""What a run may do to its directory: start, resume, overwrite, and nothing else.

Rules (each refusal is a :class:`RunDirectoryError` naming the directory and the way out):

* **A fresh run** goes into a new or empty directory. A directory that already holds a run
  (its ``config.toml``) is refused unless ``--overwrite``, which first deletes that run's own
  files (:data:`RUN_FILES`) and nothing else. Any other non-empty directory is refused; with
  ``--overwrite`` the run writes beside its files, provided none has a name the run writes: a
  ``report.md`` or ``figures/`` that is not a run's is never replaced.
* **The start is ordered** so that a kill at any moment leaves a usable directory:
  ``config.toml`` (atomically) first, then ``inputs.toml``, the inputs, ``checkpoints/``. A
  directory with nothing but the debris of a start killed before ``config.toml`` (an empty
  ``checkpoints/``, ``*.tmp`` files) counts as empty; one with ``config.toml`` resumes.
* **A resume checks what it reads**: the config digest against ``config.toml``, and the sha256
  of every input file (:func:`input_files`) against ``inputs.toml``; a changed or missing file
  is refused by its config key.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tomllib
from pathlib import Path

import xarray as xr

from ..io.atomic import atomic_write_bytes
from .config import ExperimentConfig
from .errors import RunDirectoryError
from .schema import toml_value

#: The files and folders a run writes (the only ones ``--overwrite`` deletes).
RUN_FILES = (
    "config.toml",
    "inputs.toml",
    "observations.nc",
    "truth.nc",
    "checkpoints",
    "analysis.zarr",
    "baseline.zarr",
    "analysis.nc",
    "baseline.nc",
    "metrics.nc",
    "report.md",
    "figures",
)
#: The suffix of the temporary files behind the atomic writes of :data:`RUN_FILES`.
_START_DEBRIS_SUFFIX = ".tmp"


def _listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", …" if len(names) > 3 else "")


def _is_start_debris(path: Path) -> bool:
    """A run file's temporary (``config.toml.tmp``) or an empty ``checkpoints/``."""
    if path.name.endswith(_START_DEBRIS_SUFFIX):
        return path.name.removesuffix(_START_DEBRIS_SUFFIX) in RUN_FILES
    return path.name == "checkpoints" and path.is_dir() and not any(path.iterdir())


def check_fresh(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse ``run_dir`` for a new run unless the module docstring's rules allow it; this
    only reads (:func:`begin` deletes, once the inputs have been read without error)."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunDirectoryError(f"--out {run_dir} is a file, not a directory")
    holds_run = (run_dir / "config.toml").exists()
    if holds_run and not overwrite:
        raise RunDirectoryError(
            f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to "
            f"replace it, or choose another --out"
        )
    present = sorted(p.name for p in run_dir.iterdir() if not _is_start_debris(p))
    if holds_run:
        return  # its own files go; the rest stays
    if present and not overwrite:
        raise RunDirectoryError(
            f"{run_dir} is not empty ({_listing(present)}) and holds no filtrax run; a run "
            f"writes only into a new or empty directory: choose another --out (or pass "
            f"--overwrite to write beside these files)"
        )
    clashes = [name for name in present if name in RUN_FILES]
    if clashes:
        raise RunDirectoryError(
            f"{run_dir} holds {_listing(clashes)}, which a run would replace, and no filtrax "
            f"run (no config.toml); --overwrite replaces only a run's own files: move them "
            f"or choose another --out"
        )


def _delete_run_files(run_dir: Path) -> None:
    for name in RUN_FILES:
        path = run_dir / name
        if name == "figures" and path.is_dir():
            for figure in path.glob("*.png"):  # the report's; anything else there stays
                figure.unlink()
            if not any(path.iterdir()):
                path.rmdir()
        elif path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def begin(run_dir: Path, config: ExperimentConfig) -> None:
    """The first writes of a fresh run (after :func:`check_fresh`), in an order that a kill
    cannot spoil: a previous run's own files and a killed start's debris go first."""
    if (run_dir / "config.toml").exists():
        _delete_run_files(run_dir)
    if run_dir.exists():
        for debris in [p for p in run_dir.iterdir() if _is_start_debris(p)]:
            shutil.rmtree(debris) if debris.is_dir() else debris.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.toml", config.to_toml().encode())
    record_inputs(run_dir, config)


# --------------------------------------------------------------------------------------------
# Input files
# --------------------------------------------------------------------------------------------


def input_files(config: ExperimentConfig) -> dict[str, Path]:
    """Every file the run reads that the user may edit, by the config key that names it."""
    files = {}
    if config.observations.source != "synthetic" and config.observations.path:
        files["observations.path"] = Path(config.observations.path)
    if config.truth.source == "file" and config.truth.path:
        files["truth.path"] = Path(config.truth.path)
    if config.model.initial_ensemble:
        files["model.initial_ensemble"] = Path(config.model.initial_ensemble)
    if config.model.weights:
        files["model.weights"] = Path(config.model.weights)
        files["model.weights (its card)"] = Path(config.model.weights).with_suffix(".toml")
    module, _, _ = config.model.factory.rpartition(":")
    if module.endswith(".py"):
        files["model.factory"] = Path(module)
    return files


def sha256_of_input(path: Path) -> str:
    """The sha256 of a file, or of a directory's files (a zarr store) with their names."""
    digest = hashlib.sha256()
    members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for member in members:
        if path.is_dir():
            digest.update(str(member.relative_to(path)).encode() + b"\0")
        with open(member, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def record_inputs(run_dir: Path, config: ExperimentConfig) -> None:
    """``inputs.toml``: the path and sha256 of every input file (:func:`input_files`)."""
    lines = ["# The input files this run read; --resume refuses any that changed since.\n"]
    for key, path in input_files(config).items():
        if path.exists():
            lines.append(f"\n[{toml_value(key)}]\n")
            lines.append(f"path = {toml_value(str(path))}\n")
            lines.append(f"sha256 = {toml_value(sha256_of_input(path))}\n")
    atomic_write_bytes(run_dir / "inputs.toml", "".join(lines).encode())


def check_inputs(run_dir: Path, config: ExperimentConfig) -> None:
    """On resume: every input file must be the one the finished cycles read."""
    record = run_dir / "inputs.toml"
    if not record.exists():  # a run from before inputs.toml, or one killed just before it
        record_inputs(run_dir, config)
        return
    try:
        recorded = tomllib.loads(record.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise RunDirectoryError(
            f"--resume: {record} is unreadable ({error}); it records the run's input files: "
            f"restore it, or start a new --out directory"
        ) from None
    for key, entry in recorded.items():
        path = Path(str(entry.get("path", "")))
        if not path.exists():
            raise RunDirectoryError(
                f"--resume: {key} = {str(path)!r} is gone; this run read it: restore it, or "
                f"start a new --out directory"
            )
        then, now = str(entry.get("sha256", "")), sha256_of_input(path)
        if then != now:
            raise RunDirectoryError(
                f"--resume: {key} = {str(path)!r} changed since this run began (sha256 "
                f"{then[:12]}… then, {now[:12]}… now): the finished cycles used the old "
                f"contents; restore it, or start a new --out directory"
            )


def atomic_netcdf(dataset: xr.Dataset, path: Path) -> None:
    """``dataset.to_netcdf(path)`` through a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + _START_DEBRIS_SUFFIX)
    dataset.to_netcdf(tmp)
    os.replace(tmp, path)
