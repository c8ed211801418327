"""The ``filtrax`` command line: a thin shell over the library."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import NoReturn

import click

from .compilation_cache import (
    cache_cap_mb,
    cache_directory,
    cache_files,
    enable_compilation_cache,
)

EPILOG_RUN = """\b
Examples:
  filtrax run configs/gaussian_field/demo.toml
  filtrax run configs/gaussian_field/demo.toml --out runs/n128 --set filter.particles=128
  filtrax run configs/linear_gaussian/kalman_check.toml --set filter.weights=moment_matched \\
      --set filter.tempering=fixed
  filtrax run configs/gaussian_field/demo.toml --out runs/demo --resume   # after a kill
  filtrax run configs/gaussian_field/demo.toml --out runs/demo --overwrite  # start afresh
"""


class _Shell(click.Group):
    """The ``filtrax`` group: every subcommand runs inside :func:`_answer_errors`."""

    def invoke(self, ctx: click.Context):
        with _answer_errors(ctx):
            return super().invoke(ctx)


@contextlib.contextmanager
def _answer_errors(ctx: click.Context):
    """Bad input (:class:`~filtrax.experiments.errors.InputError`, or a file-system error
    naming its file) becomes one ``error: …`` line and exit code 2; anything else is a bug:
    one line says so, and its traceback follows. ``--debug`` (or ``FILTRAX_DEBUG=1``) shows
    the traceback of bad input too."""
    import os

    from .experiments.errors import InputError

    try:
        yield
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except (InputError, OSError) as error:
        if ctx.meta.get("filtrax.debug") or os.environ.get("FILTRAX_DEBUG"):
            raise
        if isinstance(error, OSError) and not isinstance(error, InputError):
            error = _file_system_error(error)
        _fail(error)
    except Exception as error:
        click.echo(
            f"error: filtrax failed on its own ({type(error).__name__}), not on your input: "
            f"this is a bug; please report it with the traceback below",
            err=True,
        )
        if isinstance(error, EOFError):  # click would print only 'Aborted!' for these
            raise RuntimeError(f"EOFError: {error}") from error
        raise


def _file_system_error(error: OSError) -> Exception:
    where = f"{error.filename}: " if error.filename else ""
    return ValueError(f"{where}{error.strerror or error}")


@click.group(
    cls=_Shell,
    epilog="""\b
Examples:
  filtrax models                                   list the bundled emulators
  filtrax train configs/lorenz96/train_wilks05_dt0.05.toml   train a Lorenz-96 emulator
  filtrax run configs/lorenz96/wilks05.toml        a two-scale Lorenz-96 twin experiment
  filtrax demo                                     the poster's experiment, shortened (= make demo)
  filtrax kalman-check                             every method against the Kalman filter
  filtrax run configs/gaussian_field/demo.toml     a full run with report
  filtrax report runs/demo                         rebuild the report of a run
""",
)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option(
    "--debug",
    is_flag=True,
    help="Show the traceback of every error, bad input too (also FILTRAX_DEBUG=1).",
)
def main(verbose: int, debug: bool) -> None:
    """filtrax: training-free data assimilation with diffusion emulators."""
    click.get_current_context().meta["filtrax.debug"] = debug
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if click.get_current_context().invoked_subcommand != "cache":  # it only reads the cache
        enable_compilation_cache()


def _fail(error: Exception) -> NoReturn:
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


@main.command(epilog=EPILOG_RUN)
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory (default: runs/<config name>).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config entry, e.g. --set filter.particles=128 (repeatable).",
)
@click.option("--resume", is_flag=True, help="Continue a killed run from its last finished cycle.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the run in --out (its own files only; nothing else there is touched).",
)
@click.option("--quiet", is_flag=True, help="No progress bar and no phase messages.")
def run(
    config: Path,
    out: Path | None,
    overrides: tuple[str, ...],
    resume: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Run the experiment described by CONFIG (TOML) into a run directory."""
    from .experiments.config import load_config
    from .experiments.runner import run_experiment

    cfg = load_config(config, overrides)
    run_dir = out if out is not None else Path("runs") / cfg.name
    run_experiment(cfg, run_dir, resume=resume, overwrite=overwrite, quiet=quiet)
    click.echo(f"run directory: {run_dir}")
    click.echo(f"report: {run_dir / 'report.md'}")


@main.command()
@click.option("--out", default="runs/demo", show_default=True, help="The run directory.")
@click.option("--particles", type=click.IntRange(min=2), default=16, show_default=True)
@click.option("--cycles", type=click.IntRange(min=1), default=10, show_default=True)
def demo(out: str, particles: int, cycles: int) -> None:
    """The poster's experiment, shortened: what ``make demo`` runs.

    The FA-APF on the bundled 32 x 64 Held-Suarez emulator, temperature observed in
    every column, next to a free ensemble; prints one row per variable.
    """
    from .demo import main as demo_main

    demo_main(["--out", out, "--particles", str(particles), "--cycles", str(cycles)])


@main.command("kalman-check")
@click.option("--particles", type=click.IntRange(min=2), default=128, show_default=True)
# More than the 5 cycles the check leaves out of its scores (filtrax.demo's --burn-in).
@click.option("--cycles", type=click.IntRange(min=6), default=40, show_default=True)
def kalman_check(particles: int, cycles: int) -> None:
    """The linear-Gaussian twin experiment: every method against the exact Kalman filter."""
    from .demo import main as demo_main

    demo_main(["--linear-gaussian", "--particles", str(particles), "--cycles", str(cycles)])


@main.command(
    epilog="""\b
Examples:
  filtrax train configs/lorenz96/train_wilks05_dt0.05.toml
  filtrax train configs/lorenz96/train_wilks05_dt0.05.toml --set training.steps=200 \\
      --set output=runs/train/smoke
Training resumes from OUTPUT/checkpoint.npz when it exists (same config).
"""
)
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def train(config: Path, overrides: tuple[str, ...]) -> None:
    """Train the learned emulator described by the training CONFIG, then card it.

    Writes OUTPUT/NAME.npz (weights), OUTPUT/NAME.toml (model card with sha256 and
    validation scores), OUTPUT/validation.nc (the held-out data) and a checkpoint.
    """
    import tomllib

    from .experiments.config import ConfigError
    from .training.config import (
        AtmosphereTrainingConfig,
        HybridTrainingConfig,
        load_training_config,
    )
    from .training.lorenz96 import train_lorenz96

    try:
        raw = tomllib.loads(config.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as error:
        _fail(ConfigError(f"{config}: invalid TOML: {error}"))
    if "model" in raw:
        name = raw["model"].get("name", "linear_gaussian") if isinstance(raw["model"], dict) else ""
        _fail(
            ConfigError(
                f"{config} is an experiment config (it has a [model] section, model "
                f"{name!r}); 'filtrax train' takes a training config such as "
                f"configs/lorenz96/train_wilks05_dt0.05.toml. The analytic models "
                f"(linear_gaussian, gaussian_field) have nothing to train."
            )
        )
    try:
        cfg = load_training_config(config, overrides)
    except ConfigError as error:
        _fail(error)
    if isinstance(cfg, AtmosphereTrainingConfig):
        from .training.atmosphere import train_atmosphere

        try:
            card = train_atmosphere(cfg)
        except (FileNotFoundError, ValueError) as error:
            _fail(error)
    elif isinstance(cfg, HybridTrainingConfig):
        from .training.hybrid import fit_hybrid

        try:
            card = fit_hybrid(cfg)
        except (FileNotFoundError, ValueError) as error:
            _fail(error)
    else:
        card = train_lorenz96(cfg)
    click.echo(f"card: {card}")
    click.echo(f"weights: {card.with_suffix('.npz')}")


@main.command(
    epilog="""\b
Examples:
  filtrax data --setting wilks05 --time-step 0.05 --samples 2000 --out runs/data/w05.zarr
  filtrax data --setting lorenz96 --time-step 0.2 --trajectories 4 --out runs/data/l96.nc
"""
)
@click.option("--setting", type=click.Choice(["wilks05", "lorenz96"]), default="wilks05")
@click.option("--time-step", type=float, default=0.05, show_default=True, help="Δt")
@click.option("--spin-up", type=float, default=20.0, show_default=True, help="model time")
@click.option("--samples", type=int, default=1000, show_default=True, help="per trajectory")
@click.option("--trajectories", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=True, path_type=Path), required=True)
def data(
    setting: str,
    time_step: float,
    spin_up: float,
    samples: int,
    trajectories: int,
    seed: int,
    out: Path,
) -> None:
    """Write slow-variable trajectories of two-scale Lorenz-96 to OUT (.nc or .zarr).

    RK4 at dt = 0.005 in DAPPER's conventions; spin-up, sampling step, parameters and the
    key are recorded in the file's attributes.
    """
    import jax

    from .dynamics.lorenz96 import setting_model
    from .io.lorenz96_files import generate_dataset, write_dataset

    try:
        dataset = generate_dataset(
            setting_model(setting),
            jax.random.key(seed),
            sample_every=time_step,
            spin_up_time=spin_up,
            num_samples=samples,
            num_trajectories=trajectories,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        click.echo(f"wrote {write_dataset(dataset, out)}")
    except ValueError as error:
        _fail(error)


def _parse_grid(text: str) -> tuple[int, int]:
    try:
        lat, lon = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--state-grid = {text!r}; expected LATxLON, e.g. 32x64") from None
    if lat < 2 or lon < 2:
        raise ValueError(f"--state-grid = {text!r}; expected at least 2 x 2 cells")
    return lat, lon


def _parse_levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"--levels = {text!r}; expected comma-separated level indices (0-7) or 'all'"
        ) from None


@main.command(
    "heldsuarez-data",
    epilog="""\b
Examples:
  filtrax heldsuarez-data --years 5 --seed 0 --out runs/data/hs_train.zarr
  filtrax heldsuarez-data --years 1 --seed 1 --out runs/data/hs_test.zarr
  filtrax heldsuarez-data --truth-grid TL31 --state-grid 32x64 --levels all \\
      --years 20 --seed 0 --out runs/data/hs32_train.zarr
""",
)
@click.option("--years", type=float, default=5.0, show_default=True, help="after the spin-up")
@click.option("--spin-up-days", type=float, default=200.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="places the initial bump")
@click.option("--truth-grid", type=click.Choice(["T21", "TL31", "T31"]), default="T21")
@click.option(
    "--state-grid",
    default="16x32",
    show_default=True,
    help="the coarse equiangular grid, LATxLON (32x64: 5.625°)",
)
@click.option(
    "--levels",
    default="1,3,5,7",
    show_default=True,
    help="σ levels kept (indices 0-7, 0 = top), or 'all'",
)
@click.option(
    "--time-step-minutes",
    type=float,
    default=None,
    help="the integrator's step (default: 30 at T21, 20 at TL31 and T31)",
)
@click.option("--chunk-days", type=int, default=60, show_default=True, help="days per write")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="a .zarr store")
def heldsuarez_data(
    years: float,
    spin_up_days: float,
    seed: int,
    truth_grid: str,
    state_grid: str,
    levels: str,
    time_step_minutes: float | None,
    chunk_days: int,
    out: Path,
):
    """Write coarse-grained Held–Suarez states (dinosaur) every 12 h to OUT (zarr).

    The truth runs at TRUTH_GRID with 8 σ levels; states are conservatively averaged to
    STATE_GRID and the LEVELS kept (filtrax.dynamics.heldsuarez). Settings, versions and
    the seed are in the store's attributes. A killed run, called again with the same
    settings, resumes from its last written chunk (OUT.partial and OUT.resume.npz).
    """
    from .dynamics.heldsuarez import TIME_STEP_MINUTES, HeldSuarezSetup
    from .io.heldsuarez_store import generate_heldsuarez

    try:
        state_lat, state_lon = _parse_grid(state_grid)
        kept = tuple(range(8)) if levels == "all" else _parse_levels(levels)
        out.parent.mkdir(parents=True, exist_ok=True)
        path = generate_heldsuarez(
            out,
            years=years,
            spin_up_days=spin_up_days,
            seed=seed,
            chunk_days=chunk_days,
            setup=HeldSuarezSetup(
                truth_grid=truth_grid,
                time_step_minutes=time_step_minutes or TIME_STEP_MINUTES[truth_grid],
                state_lat=state_lat,
                state_lon=state_lon,
                state_levels=kept,
            ),
        )
    except FloatingPointError as error:
        _fail(ValueError(f"{error}; a smaller --time-step-minutes may keep it stable"))
    except ValueError as error:
        _fail(error)
    click.echo(f"wrote {path}")


@main.group()
def cache() -> None:
    """The on-disk cache of XLA compilations ($FILTRAX_CACHE_DIR/xla)."""


@cache.command("info")
def cache_info() -> None:
    """Where the cache is, its size and its cap."""
    directory = cache_directory()
    if directory is None:
        click.echo("the compilation cache is off (FILTRAX_CACHE_DIR is empty)")
        return
    files = cache_files(directory)
    size = sum(p.stat().st_size for p in files) / 2**20
    cap = cache_cap_mb()
    click.echo(
        f"{directory}: {len(files)} files, {size:.1f} MB (cap {cap:g} MB, FILTRAX_CACHE_MAX_MB)"
    )


@cache.command("clear")
def cache_clear() -> None:
    """Delete every cached compilation (the next runs compile afresh)."""
    import shutil

    directory = cache_directory()
    files = cache_files(directory)
    size = sum(p.stat().st_size for p in files) / 2**20
    if directory is not None and directory.exists():
        shutil.rmtree(directory)
    click.echo(f"removed {len(files)} files ({size:.1f} MB) from {directory}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report(run_dir: Path) -> None:
    """(Re)build report.md and the figures of a finished run."""
    from .report import write_report

    try:
        path = write_report(run_dir)
    except FileNotFoundError as error:
        _fail(error)
    click.echo(f"report: {path}")


@main.command()
def models() -> None:
    """List the bundled emulators with their cards."""
    from .emulators.cards import list_cards

    for card in list_cards():
        click.echo(f"{card['name']}  ({card['kind']}, licence {card['license']})")
        click.echo(f"    {card['description']}")
        for key in ("state", "time_step", "weights", "sha256", "reference"):
            if card.get(key):
                click.echo(f"    {key}: {card[key]}")


if __name__ == "__main__":
    main()
