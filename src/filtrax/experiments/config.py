"""The experiment config: frozen dataclasses validated from TOML, plus ``--set`` overrides.

The sections are built on :mod:`.schema` (every field validated on construction, with its
help line and constraints); the allowed names of samplers, guidance, filters, tempering,
weights and resampling schemes are the keys of the registries in :mod:`.builders`.
List-valued fields are stored as tuples so that configs are immutable and hashable.

    >>> cfg = config_from_dict({"filter": {"particles": 128}}, ["sampler.name=heun"])
    >>> cfg.filter.particles, cfg.sampler.name
    (128, 'heun')
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from .builders import (
    COMMON_FILTER_KEYS,
    FILTER_KEYS,
    FILTERS,
    GUIDANCE,
    HYBRIDS,
    REJUVENATION,
    RESAMPLING_NAMES,
    SAMPLERS,
    TEMPERING,
    WEIGHTS,
)
from .errors import ConfigError
from .models import COMMON_MODEL_KEYS, MODELS
from .schema import (
    NON_NEGATIVE,
    POSITIVE,
    Validated,
    apply_overrides,
    build_section,
    display,
    field,
    to_dict,
    toml_value,
)

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "FilterConfig",
    "GuidanceConfig",
    "ModelConfig",
    "ObservationsConfig",
    "ParallelConfig",
    "RunConfig",
    "SamplerConfig",
    "TruthConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "valid_keys",
]


def _iso_datetime(value: str) -> None:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 date-time such as '2000-01-01T00:00'") from None


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


#: ``model.emulator``'s schema default, the Lorenz-96 family's card (a family may declare its
#: own: :attr:`~.models.ModelSetting.default_emulator`).
EMULATOR_DEFAULT = "l96_wilks05_dt0.05"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(Validated):
    """``[model]``: the dynamical model / emulator."""

    SECTION: ClassVar[str] = "model"

    name: str = field(
        "linear_gaussian",
        "model family",
        choices=MODELS.names(),
    )
    factory: str = field(
        "",
        "your own model setting by import path, 'package.module:NAME' or 'path/to/file.py:NAME' "
        "(a filtrax.experiments.models.ModelSetting, or a function returning one); it "
        "replaces model.name's setting",
    )
    emulator: str = field(
        EMULATOR_DEFAULT,
        "bundled emulator card (see 'filtrax models') [lorenz96, heldsuarez]; default: "
        "l96_wilks05_dt0.05 for lorenz96, hs_t21_32x64_hybrid for heldsuarez",
    )
    time_step: float = field(0.05, "model time per cycle, Δt [lorenz96]", **POSITIVE)
    spin_up: float = field(20.0, "model time of the truth's spin-up [lorenz96]", min=0.0)
    initial_spread: float = field(
        0.0, "std of the initial ensemble around the true state [lorenz96]", **NON_NEGATIVE
    )
    initial_ensemble: str = field(
        "",
        "your own initial ensemble: a netCDF/zarr file with a 'member' dimension (one member "
        "per particle; docs: Observation files); replaces the perturbed copies of the initial "
        "state",
    )
    state_dim: int = field(16, "state dimension [linear_gaussian]", min=2)
    observed: int = field(8, "number of observed components [linear_gaussian]", min=1)
    observation_std: float = field(0.5, "observation error std [linear_gaussian]", **POSITIVE)
    num_lat: int = field(16, "latitudes of the grid", min=4)
    num_lon: int = field(32, "longitudes of the grid", min=4)
    variables: tuple[str, ...] = field(
        ["temperature", "u_component_of_wind"], "variables of the gridded state"
    )
    levels: tuple[float, ...] = field([], "pressure levels (empty = surface only)")
    correlation_length_km: float = field(1500.0, "spatial correlation length", **POSITIVE)
    ar_coefficient: float = field(
        0.9, "AR(1) coefficient per cycle", min=0.0, max=1.0, min_exclusive=True, max_exclusive=True
    )
    noise_std: float = field(1.0, "model noise std", **POSITIVE)
    weights: str = field(
        "", "weights trained by 'filtrax train' (empty = the card's shipped weights)"
    )
    checkpoint: str = field("", "GenCast checkpoint file (.npz from dm_graphcast) [gencast]")
    statistics: str = field("", "directory of GenCast's *_by_level.nc statistics files [gencast]")
    gpu_attention: bool = field(
        True, "switch GenCast's splash attention to the GPU kernels [gencast]"
    )
    noise: str = field(
        "gaussian",
        "latent noise of the diffusion: i.i.d. or GenCast's spherical white noise [heldsuarez]",
        choices=("gaussian", "spherical"),
    )

    def keys_in_effect(self) -> tuple[str, ...] | None:
        """The keys ``model.name``'s family reads (``None``: all, for ``model.factory``)."""
        if self.factory:
            return None
        family = MODELS[self.name].keys
        return None if family is None else (*COMMON_MODEL_KEYS, *family)

    def _check(self) -> None:
        own_default = "" if self.factory else MODELS[self.name].default_emulator
        if own_default and self.emulator == EMULATOR_DEFAULT:
            # The schema's default is the Lorenz-96 card; a family with cards of its own
            # starts from its own, written out in the resolved config.
            object.__setattr__(self, "emulator", own_default)
        # A key the family never reads would be silently ignored: refuse it unless it is
        # left at its default, so that the resolved config says what the run used.
        in_effect = self.keys_in_effect()
        if in_effect is None:
            return
        outside = self.set_outside(in_effect)
        if outside:
            name, value = next(iter(outside.items()))  # the first in schema order
            raise ConfigError(
                f"model.{name} = {display(value)} has no effect with model.name = "
                f"{self.name!r}; its own keys are: {', '.join(MODELS[self.name].keys or ())} "
                f"(and {', '.join(COMMON_MODEL_KEYS)})"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TruthConfig(Validated):
    """``[truth]``: where the true trajectory comes from."""

    SECTION: ClassVar[str] = "truth"

    source: str = field(
        "simulate",
        "simulate the truth, read it from a file, use the emulator's bundled held-out "
        "segment ('bundled'), or run without one ('none': no skill scores)",
        choices=("simulate", "file", "bundled", "none"),
    )
    path: str = field("", "truth file (required when source = 'file')")

    def _check(self) -> None:
        if self.source == "file" and not self.path:
            raise ConfigError("truth.path must be non-empty when truth.source = 'file'")


#: ``observations.error_std`` of synthetic observations when the config leaves it unset.
SYNTHETIC_ERROR_STD = 0.1


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObservationsConfig(Validated):
    """``[observations]``: what is observed, where and how often."""

    SECTION: ClassVar[str] = "observations"

    source: str = field(
        "synthetic",
        "where observations come from",
        choices=("synthetic", "gridded", "stations", "sites"),
    )
    path: str = field("", "observation file (required for 'gridded' and 'stations')")
    variables: tuple[str, ...] = field([], "observed variables (empty = model default)")
    levels: tuple[float, ...] = field([], "observed levels (empty = all levels)")
    stride: int = field(4, "observe every stride-th grid point (or site)", min=1)
    error_std: float = field(
        0.0,
        f"observation error std; 0 = unset: the file's own (gridded, stations, sites), "
        f"{SYNTHETIC_ERROR_STD} for synthetic observations",
        **NON_NEGATIVE,
    )
    every: int = field(1, "observe every k-th cycle", min=1)
    stations: int = field(
        0,
        "synthetic on a grid: observe this many columns drawn at random, with probability "
        "proportional to their area, instead of every stride-th point (0: the stride)",
        min=0,
    )
    network_seed: int = field(
        0, "the seed the random columns (observations.stations) are drawn with", min=0
    )

    def _check(self) -> None:
        if self.source in ("gridded", "stations", "sites") and not self.path:
            raise ConfigError(
                f"observations.path must be non-empty when observations.source = {self.source!r}"
            )
        if self.stations and self.source != "synthetic":
            raise ConfigError(
                f"observations.stations = {self.stations} draws a synthetic network, but "
                f"observations.source = {self.source!r} reads its own; set it to 0"
            )
        if self.source == "synthetic" and self.error_std == 0.0:
            # Resolved here, so that config.toml says which std the observations were drawn
            # with (and the digest of a run from before 0 meant "unset" is unchanged).
            object.__setattr__(self, "error_std", SYNTHETIC_ERROR_STD)


#: The ``filter.hybrid`` values whose Kalman update needs the weights' predicted observations.
PREDICTION_HYBRIDS = ("predictive", "predictive_unabsorbed", "unabsorbed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilterConfig(Validated):
    """``[filter]``: the assimilation method."""

    SECTION: ClassVar[str] = "filter"

    method: str = field(
        "fa_apf",
        "assimilation method",
        choices=FILTERS.names(),
    )
    particles: int = field(64, "ensemble size", min=2, max=1_000_000)
    weights: str = field("dirac", "predictive-weight approximation", choices=WEIGHTS.names())
    tempering: str = field("ess_band", "tempering schedule", choices=TEMPERING.names())
    alpha: float = field(1.0, "fixed tempering exponent", min=0.0, max=1.0)
    ess_band: tuple[float, ...] = field([0.2, 0.25], "target ESS fraction band [lo, hi]")
    resampling: str = field(
        "systematic",
        "resampling scheme",
        choices=RESAMPLING_NAMES,
    )
    weight_sigma_max: float = field(88.0, "largest noise level of the weight", **POSITIVE)
    noise_draws: int = field(1, "noise draws per weight evaluation", min=1)
    cg_iterations: int = field(4, "CG iterations [moment-matched weights]", min=1)
    skip_first_selection: bool = field(True, "skip the selection step in the first cycle")
    inflation: float = field(
        1.0,
        "multiplicative inflation of the forecast's anomalies [enkf, fa_apf, bootstrap], of its "
        "covariance [letkf: rho = lambda^2, as Hunt et al. 2007]; the floor when adaptive",
        min=1.0,
    )
    adaptive_inflation: bool = field(
        False,
        "re-choose the inflation every cycle from the innovation [fa_apf, bootstrap, enkf, letkf]",
    )
    inflation_max: float = field(2.0, "largest adaptive inflation", min=1.0)
    localisation_block: tuple[int, ...] = field(
        [], "sites per selection block along the frame's last axes [fa_apf, bootstrap]; [] = global"
    )
    localisation_half_width: float = field(
        0.0,
        "Gaspari-Cohn half-width c of the covariance localisation (zero beyond 2c): km on a "
        "latitude-longitude grid, sites on the Lorenz-96 ring; 0 = global [enkf, letkf, "
        "fa_apf with a hybrid]",
        min=0.0,
    )
    relaxation: float = field(
        0.0,
        "relaxation of the analysis anomalies to the forecast's (RTPP; 0 = none) [letkf]",
        min=0.0,
        max=1.0,
    )
    rejuvenation: str = field(
        "none",
        "what moves the selected particles before the proposal: none, the regularised "
        "particle filter's shrinkage kernel, or the ensemble transform particle filter's "
        "optimal-transport transform (global selection only), or the transform followed by "
        "the kernel [fa_apf, bootstrap]",
        choices=REJUVENATION.names(),
    )
    rejuvenation_bandwidth: float = field(
        0.5,
        "the kernel's bandwidth h in (0, 1] [rejuvenation = kernel, transform+kernel]",
        min=0.0,
        min_exclusive=True,
        max=1.0,
    )
    rejuvenation_regularisation: float = field(
        0.05,
        "the transform's entropic regularisation, relative to the mean squared distance "
        "between particles [rejuvenation = transform, transform+kernel]",
        min=0.0,
        min_exclusive=True,
    )
    hybrid: str = field(
        "none",
        "what the FA-APF does with the likelihood its tempering leaves out of the selection: "
        "none (the paper's: the move is guided by the whole likelihood); letkf (the ensemble "
        "Kalman particle filter: the move is guided by the tempered likelihood and the LETKF "
        "assimilates the rest); predictive (the move guided by the whole likelihood, then the "
        "predictive weights' remaining share by a Kalman transform, not resampling); "
        "predictive_unabsorbed (the same, scaled by the share of the innovation the move did "
        "not absorb); unabsorbed (the LETKF of the moved particles with that share). The "
        "Kalman updates are localised by filter.localisation_half_width; the last three need "
        "weights = dirac [fa_apf]",
        choices=HYBRIDS.names(),
    )
    observation_error_inflation: float = field(
        1.0,
        "the filter assumes observations.error_std times this (R inflation); the observations "
        "themselves keep observations.error_std [every method but free]",
        min=1.0,
    )

    def keys_in_effect(self) -> tuple[str, ...]:
        """The keys ``filter.method`` reads (:data:`~.builders.FILTER_KEYS`)."""
        return (*COMMON_FILTER_KEYS, *FILTER_KEYS[self.method])

    def keys_without_effect(self) -> dict[str, Any]:
        """The keys set away from their defaults that ``filter.method`` does not read.

        Not refused: switching ``filter.method`` on one config is how methods are compared
        (``--set filter.method=letkf``). The run names them in one line, and the resolved
        ``config.toml`` drops them."""
        return self.set_outside(self.keys_in_effect())

    def in_effect_only(self) -> FilterConfig:
        """This section with :meth:`keys_without_effect` back at their defaults."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: defaults[k] for k in self.keys_without_effect()})

    def _check(self) -> None:
        block = self.localisation_block
        if any(b < 1 for b in block):
            raise ConfigError(
                f"filter.localisation_block = {display(block)} is invalid: every entry must be "
                f"an integer >= 1 (sites per block), or [] for global selection"
            )
        hybrid = self.method == "fa_apf" and self.hybrid != "none"
        if self.localisation_half_width > 0 and not (hybrid or self.method in ("enkf", "letkf")):
            raise ConfigError(
                f"filter.localisation_half_width = {self.localisation_half_width!r} applies to "
                f"enkf, letkf and fa_apf with a filter.hybrid other than 'none', not "
                f"filter.method = {self.method!r} with filter.hybrid = {self.hybrid!r}; the "
                f"particle filters localise their selection with filter.localisation_block"
            )
        if hybrid and block:
            raise ConfigError(
                f"filter.hybrid = {self.hybrid!r} needs global selection, not "
                f"filter.localisation_block = {display(block)}: the Kalman update takes the "
                f"likelihood that one tempering exponent per cycle left out"
            )
        if hybrid and self.hybrid in PREDICTION_HYBRIDS and self.weights != "dirac":
            raise ConfigError(
                f"filter.hybrid = {self.hybrid!r} needs the weights' predicted observations: "
                f"filter.weights = 'dirac', not {self.weights!r}"
            )
        if self.relaxation > 0 and self.method != "letkf":
            raise ConfigError(
                f"filter.relaxation = {self.relaxation!r} applies to letkf, not "
                f"filter.method = {self.method!r}"
            )
        if self.observation_error_inflation != 1.0 and self.method == "free":
            raise ConfigError(
                f"filter.observation_error_inflation = {self.observation_error_inflation!r} "
                f"applies to the filters that use observations, not filter.method = 'free'"
            )
        if self.adaptive_inflation and self.method == "free":
            raise ConfigError(
                "filter.adaptive_inflation = true applies to the filters that use observations, "
                "not filter.method = 'free'"
            )
        if self.rejuvenation != "none" and self.method not in ("fa_apf", "bootstrap"):
            raise ConfigError(
                f"filter.rejuvenation = {self.rejuvenation!r} applies to fa_apf and bootstrap, "
                f"not filter.method = {self.method!r}"
            )
        if self.rejuvenation.startswith("transform") and block:
            raise ConfigError(
                f"filter.rejuvenation = {self.rejuvenation!r} needs global selection, not "
                f"filter.localisation_block = {display(block)}: a stitched ensemble carries no "
                f"weights of its own to transport"
            )
        if self.adaptive_inflation and self.inflation_max < self.inflation:
            raise ConfigError(
                f"filter.inflation_max = {self.inflation_max!r} is below filter.inflation = "
                f"{self.inflation!r} (the floor of the adaptive inflation)"
            )
        uses_predictions = bool(block) or self.adaptive_inflation or self.inflation != 1.0
        if uses_predictions and self.method == "fa_apf" and self.weights != "dirac":
            raise ConfigError(
                f"filter.weights = {self.weights!r} cannot be combined with localisation or "
                f"inflation in the FA-APF: use filter.weights = 'dirac'"
            )
        band = self.ess_band
        if not (len(band) == 2 and 0 < band[0] <= band[1] <= 1):
            raise ConfigError(
                f"filter.ess_band = {display(band)} is invalid: "
                f"must be two numbers [lo, hi] with 0 < lo <= hi <= 1"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerConfig(Validated):
    """``[sampler]``: the diffusion sampler of the emulator."""

    SECTION: ClassVar[str] = "sampler"

    name: str = field("dpmpp2s", "sampler", choices=SAMPLERS.names())
    levels: int = field(20, "number of noise levels", min=2)
    sigma_max: float = field(80.0, "largest noise level", **POSITIVE)
    sigma_min: float = field(0.03, "smallest noise level", **POSITIVE)
    rho: float = field(7.0, "Karras schedule exponent", **POSITIVE)
    churn: float = field(2.5, "stochastic churn [dpmpp2s]", **NON_NEGATIVE)
    churn_noise: float = field(1.05, "churn noise scale [dpmpp2s]", **NON_NEGATIVE)
    eta: float = field(1.0, "stochasticity [ddim]", **NON_NEGATIVE)
    order: int = field(3, "multistep order [adams_bashforth]", min=1, max=5)
    corrections: int = field(2, "Langevin corrections [adams_bashforth]", min=0)
    langevin_step: float = field(0.25, "Langevin step size [adams_bashforth]", **POSITIVE)

    def _check(self) -> None:
        if not self.sigma_min < self.sigma_max:
            raise ConfigError(
                f"sampler.sigma_min = {self.sigma_min!r} must be < "
                f"sampler.sigma_max = {self.sigma_max!r}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class GuidanceConfig(Validated):
    """``[guidance]``: how proposals are conditioned on the observations."""

    SECTION: ClassVar[str] = "guidance"

    name: str = field("mmps", "guidance method", choices=GUIDANCE.names())
    iterations: int = field(2, "linear-solver iterations", min=1)
    solver: str = field("cg", "linear solver", choices=("cg", "bicgstab", "gmres"))
    gamma: float = field(0.01, "covariance regularisation", **NON_NEGATIVE)
    scale: float = field(1.0, "guidance scale", **NON_NEGATIVE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig(Validated):
    """``[run]``: cycling and output."""

    SECTION: ClassVar[str] = "run"

    cycles: int = field(30, "assimilation cycles", min=1)
    burn_in: int = field(0, "cycles left out of the scores", min=0)
    cycle_hours: float = field(12.0, "hours between cycles", **POSITIVE)
    start_time: str = field("2000-01-01T00:00", "initial time (ISO 8601)", check=_iso_datetime)
    output_format: str = field("zarr", "output format", choices=("zarr", "netcdf"))
    record_ensemble: bool = field(True, "store the analysis ensemble")
    baseline: bool = field(True, "also run a free ensemble for comparison")
    profile: bool = field(
        False,
        "after the run, compile and time each phase of a cycle on its own (the seconds_* "
        "split in metrics.nc); it costs about a third of a short run",
    )
    observation_diagnostics: bool = field(
        True,
        "O-B, O-A, spread in observation space, reduced chi-square and Desroziers' check in "
        "metrics.nc and the report; costs one unguided forecast per cycle",
    )

    def _check(self) -> None:
        if not self.burn_in < self.cycles:
            raise ConfigError(f"run.burn_in = {self.burn_in} must be < run.cycles = {self.cycles}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParallelConfig(Validated):
    """``[parallel]``: how particles are laid out over devices (α and ancestors unchanged;
    fields agree to float32 round-off)."""

    SECTION: ClassVar[str] = "parallel"

    devices: int = field(1, "devices to shard particles over (0 = every device JAX sees)", min=0)
    particle_batch_size: int = field(
        0, "at most this many particles per device at once (0 = all)", min=0
    )
    distributed: bool = field(
        False, "call jax.distributed.initialize() first (multi-host, e.g. under srun)"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig(Validated):
    """A whole experiment; every field has a default, so an empty TOML file is valid."""

    name: str = field("experiment", "experiment name")
    seed: int = field(0, "random seed", min=0)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    truth: TruthConfig = dataclasses.field(default_factory=TruthConfig)
    observations: ObservationsConfig = dataclasses.field(default_factory=ObservationsConfig)
    filter: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    guidance: GuidanceConfig = dataclasses.field(default_factory=GuidanceConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples) in schema order; ``tomllib`` gives it back.

        ``[model]`` holds only the keys of ``model.name``'s family
        (:meth:`ModelConfig.keys_in_effect`; the others are at their defaults), and
        ``[filter]`` only those ``filter.method`` reads (:meth:`FilterConfig.keys_in_effect`).
        """
        data = self.full_dict()
        in_effect = self.model.keys_in_effect()
        if in_effect is not None:
            data["model"] = {k: v for k, v in data["model"].items() if k in in_effect}
        in_effect = self.filter.keys_in_effect()
        data["filter"] = {k: v for k, v in data["filter"].items() if k in in_effect}
        return data

    def full_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with every key of every section, in effect or not."""
        return to_dict(self)

    def to_toml(self) -> str:
        """The config as TOML (deterministic: schema order, every key in effect written)."""
        return toml_text(self.to_dict())


def toml_text(data: dict[str, Any]) -> str:
    """A config's nested dict as TOML: top-level keys first, then one table per section."""
    top, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            body = "".join(f"{k} = {toml_value(v)}\n" for k, v in value.items())
            tables.append(f"[{key}]\n{body}")
        else:
            top.append(f"{key} = {toml_value(value)}\n")
    return "\n".join(["".join(top), *tables])


def config_from_dict(data: dict[str, Any], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Validate a nested dict (as from ``tomllib``) after applying ``overrides``."""
    return build_section(ExperimentConfig, apply_overrides(data, overrides))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read and validate a TOML config file; ``overrides`` are ``"section.key=value"``."""
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark, as some editors write, is not part of the TOML.
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    except UnicodeDecodeError as error:
        reason = f"{error.reason} at byte {error.start}"
        raise ConfigError(f"{path}: not UTF-8 text ({reason})") from None
    return config_from_dict(data, overrides)


def valid_keys() -> list[str]:
    """Every dotted key of the schema (``name``, ``seed``, ``model.name``, ...) in order."""

    def walk(cls: Any, prefix: str) -> list[str]:
        hints = typing.get_type_hints(cls)
        keys = []
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                keys.extend(walk(hints[f.name], f"{prefix}{f.name}."))
            else:
                keys.append(prefix + f.name)
        return keys

    return walk(ExperimentConfig, "")
