"""The experiment config: frozen dataclasses validated from TOML, plus ``--set`` overrides.

Every field carries its constraints in ``dataclasses.field(metadata=...)``:

    help            one line for the CLI help
    min, max        inclusive bounds (``min_exclusive`` / ``max_exclusive`` make them strict)
    choices         the allowed values
    check           a callable that raises ``ValueError(reason)`` for an invalid value

One generic validator (``_Validated.__post_init__``) walks the fields
with :func:`typing.get_type_hints`, so a section built by hand or by ``dataclasses.replace`` is
validated exactly like one read from a file. Cross-field checks live in each section's
``_check``. List-valued fields are stored as tuples so that configs are immutable and hashable.

    >>> cfg = config_from_dict({"filter": {"particles": 128}}, ["sampler.name=heun"])
    >>> cfg.filter.particles, cfg.sampler.name
    (128, 'heun')
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import tomllib
import typing
from collections.abc import Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, ClassVar

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


class ConfigError(ValueError):
    """An invalid config: the message names the dotted key, the value and what is allowed."""


def _field(default: Any, help: str, **constraints: Any) -> Any:
    """A dataclass field with a default, a help line and validation metadata."""
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={"help": help, **constraints})


def _iso_datetime(value: str) -> None:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 date-time such as '2000-01-01T00:00'") from None


POSITIVE: dict[str, Any] = {"min": 0.0, "min_exclusive": True}
NON_NEGATIVE: dict[str, Any] = {"min": 0.0}


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _display(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


_EXPECTED = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_EXPECTED_ITEMS = {int: "integers", float: "numbers", str: "strings"}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint`` (int -> float, list -> tuple), or a ConfigError."""
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise ConfigError(
                f"{key}: expected a list of {_EXPECTED_ITEMS[item]}, got {_show(value)}"
            )
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {_show(value)}")
    if type(value) is not hint:  # exact: bool is not accepted as int
        raise ConfigError(f"{key}: expected {_EXPECTED[hint]}, got {_show(value)}")
    return value


def _bounds(meta: typing.Mapping[str, Any]) -> str:
    parts = []
    if "min" in meta:
        parts.append(f"{'>' if meta.get('min_exclusive') else '>='} {meta['min']!r}")
    if "max" in meta:
        parts.append(f"{'<' if meta.get('max_exclusive') else '<='} {meta['max']!r}")
    return " and ".join(parts)


def _check_value(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(str(c) for c in sorted(meta["choices"]))
        raise ConfigError(f"{key} = {value!r} is not one of: {allowed}")
    low, high = meta.get("min"), meta.get("max")
    too_low = low is not None and (value <= low if meta.get("min_exclusive") else value < low)
    too_high = high is not None and (value >= high if meta.get("max_exclusive") else value > high)
    if too_low or too_high:
        raise ConfigError(f"{key} = {value!r} is out of range: must be {_bounds(meta)}")
    if "check" in meta:
        try:
            meta["check"](value)
        except ValueError as error:
            raise ConfigError(f"{key} = {value!r} is invalid: {error}") from None


class _Validated:
    """Mixin: validate every field on construction, then run the cross-field ``_check``."""

    SECTION: ClassVar[str] = ""

    def _key(self, name: str) -> str:
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            key, hint, value = self._key(f.name), hints[f.name], getattr(self, f.name)
            if dataclasses.is_dataclass(hint):
                if not isinstance(value, hint):
                    raise ConfigError(f"{key}: expected a table, got {_show(value)}")
                continue
            value = _coerce(key, value, hint)
            for item in value if isinstance(value, tuple) else (value,):
                _check_value(key, item, f.metadata)
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Cross-field checks; overridden by sections that have them."""


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(_Validated):
    """``[model]``: the dynamical model / emulator."""

    SECTION: ClassVar[str] = "model"

    name: str = _field(
        "linear_gaussian",
        "model family",
        choices=("linear_gaussian", "gaussian_field", "lorenz96", "heldsuarez", "gencast"),
    )
    emulator: str = _field(
        "l96_wilks05_dt0.05",
        "bundled emulator card (see 'filtrax models') [lorenz96, heldsuarez]",
    )
    time_step: float = _field(0.05, "model time per cycle, Δt [lorenz96]", **POSITIVE)
    spin_up: float = _field(20.0, "model time of the truth's spin-up [lorenz96]", min=0.0)
    initial_spread: float = _field(
        0.0, "std of the initial ensemble around the true state [lorenz96]", **NON_NEGATIVE
    )
    state_dim: int = _field(16, "state dimension [linear_gaussian]", min=2)
    observed: int = _field(8, "number of observed components [linear_gaussian]", min=1)
    observation_std: float = _field(0.5, "observation error std [linear_gaussian]", **POSITIVE)
    num_lat: int = _field(16, "latitudes of the grid", min=4)
    num_lon: int = _field(32, "longitudes of the grid", min=4)
    variables: tuple[str, ...] = _field(
        ["temperature", "u_component_of_wind"], "variables of the gridded state"
    )
    levels: tuple[float, ...] = _field([], "pressure levels (empty = surface only)")
    correlation_length_km: float = _field(1500.0, "spatial correlation length", **POSITIVE)
    ar_coefficient: float = _field(
        0.9, "AR(1) coefficient per cycle", min=0.0, max=1.0, min_exclusive=True, max_exclusive=True
    )
    noise_std: float = _field(1.0, "model noise std", **POSITIVE)
    weights: str = _field(
        "", "weights trained by 'filtrax train' (empty = the card's shipped weights)"
    )
    checkpoint: str = _field("", "GenCast checkpoint file (.npz from dm_graphcast) [gencast]")
    statistics: str = _field("", "directory of GenCast's *_by_level.nc statistics files [gencast]")
    gpu_attention: bool = _field(
        True, "switch GenCast's splash attention to the GPU kernels [gencast]"
    )
    noise: str = _field(
        "gaussian",
        "latent noise of the diffusion: i.i.d. or GenCast's spherical white noise [heldsuarez]",
        choices=("gaussian", "spherical"),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TruthConfig(_Validated):
    """``[truth]``: where the true trajectory comes from."""

    SECTION: ClassVar[str] = "truth"

    source: str = _field(
        "simulate",
        "simulate the truth, read it from a file, use the emulator's bundled held-out "
        "segment ('bundled'), or run without one ('none': no skill scores)",
        choices=("simulate", "file", "bundled", "none"),
    )
    path: str = _field("", "truth file (required when source = 'file')")

    def _check(self) -> None:
        if self.source == "file" and not self.path:
            raise ConfigError("truth.path must be non-empty when truth.source = 'file'")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObservationsConfig(_Validated):
    """``[observations]``: what is observed, where and how often."""

    SECTION: ClassVar[str] = "observations"

    source: str = _field(
        "synthetic",
        "where observations come from",
        choices=("synthetic", "gridded", "stations", "sites"),
    )
    path: str = _field("", "observation file (required for 'gridded' and 'stations')")
    variables: tuple[str, ...] = _field([], "observed variables (empty = model default)")
    levels: tuple[float, ...] = _field([], "observed levels (empty = all levels)")
    stride: int = _field(4, "observe every stride-th grid point (or site)", min=1)
    error_std: float = _field(0.1, "observation error std", **POSITIVE)
    every: int = _field(1, "observe every k-th cycle", min=1)

    def _check(self) -> None:
        if self.source in ("gridded", "stations", "sites") and not self.path:
            raise ConfigError(
                f"observations.path must be non-empty when observations.source = {self.source!r}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilterConfig(_Validated):
    """``[filter]``: the assimilation method."""

    SECTION: ClassVar[str] = "filter"

    method: str = _field(
        "fa_apf",
        "assimilation method",
        choices=("fa_apf", "bootstrap", "enkf", "letkf", "free"),
    )
    particles: int = _field(64, "ensemble size", min=2, max=1_000_000)
    weights: str = _field(
        "dirac", "predictive-weight approximation", choices=("dirac", "moment_matched")
    )
    tempering: str = _field("ess_band", "tempering schedule", choices=("ess_band", "fixed"))
    alpha: float = _field(1.0, "fixed tempering exponent", min=0.0, max=1.0)
    ess_band: tuple[float, ...] = _field([0.2, 0.25], "target ESS fraction band [lo, hi]")
    resampling: str = _field(
        "systematic",
        "resampling scheme",
        choices=("systematic", "stratified", "residual", "multinomial"),
    )
    weight_sigma_max: float = _field(88.0, "largest noise level of the weight", **POSITIVE)
    noise_draws: int = _field(1, "noise draws per weight evaluation", min=1)
    cg_iterations: int = _field(4, "CG iterations [moment-matched weights]", min=1)
    skip_first_selection: bool = _field(True, "skip the selection step in the first cycle")
    inflation: float = _field(
        1.0,
        "multiplicative inflation of the forecast [enkf, letkf, fa_apf, bootstrap]; the floor "
        "when adaptive",
        min=1.0,
    )
    adaptive_inflation: bool = _field(
        False, "re-choose the inflation every cycle from the innovation [fa_apf, bootstrap]"
    )
    inflation_max: float = _field(2.0, "largest adaptive inflation", min=1.0)
    localisation_block: tuple[int, ...] = _field(
        [], "sites per selection block along the frame's last axes [fa_apf, bootstrap]; [] = global"
    )
    localisation_half_width: float = _field(
        0.0,
        "Gaspari-Cohn half-width c of the covariance localisation (zero beyond 2c): km on a "
        "latitude-longitude grid, sites on the Lorenz-96 ring; 0 = global [enkf, letkf]",
        min=0.0,
    )
    relaxation: float = _field(
        0.0,
        "relaxation of the analysis anomalies to the forecast's (RTPP; 0 = none) [letkf]",
        min=0.0,
        max=1.0,
    )
    observation_error_inflation: float = _field(
        1.0,
        "the filter assumes observations.error_std times this (R inflation); the observations "
        "themselves keep observations.error_std [every method but free]",
        min=1.0,
    )

    def _check(self) -> None:
        block = self.localisation_block
        if any(b < 1 for b in block):
            raise ConfigError(
                f"filter.localisation_block = {_display(block)} is invalid: every entry must be "
                f"an integer >= 1 (sites per block), or [] for global selection"
            )
        if self.localisation_half_width > 0 and self.method not in ("enkf", "letkf"):
            raise ConfigError(
                f"filter.localisation_half_width = {self.localisation_half_width!r} applies to "
                f"enkf and letkf, not filter.method = {self.method!r}; the particle filters "
                f"localise their selection with filter.localisation_block"
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
        if self.adaptive_inflation and self.method not in ("fa_apf", "bootstrap"):
            raise ConfigError(
                f"filter.adaptive_inflation = true applies to fa_apf and bootstrap, not "
                f"filter.method = {self.method!r}"
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
                f"filter.ess_band = {_display(band)} is invalid: "
                f"must be two numbers [lo, hi] with 0 < lo <= hi <= 1"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerConfig(_Validated):
    """``[sampler]``: the diffusion sampler of the emulator."""

    SECTION: ClassVar[str] = "sampler"

    name: str = _field(
        "dpmpp2s", "sampler", choices=("dpmpp2s", "heun", "euler", "ddim", "adams_bashforth")
    )
    levels: int = _field(20, "number of noise levels", min=2)
    sigma_max: float = _field(80.0, "largest noise level", **POSITIVE)
    sigma_min: float = _field(0.03, "smallest noise level", **POSITIVE)
    rho: float = _field(7.0, "Karras schedule exponent", **POSITIVE)
    churn: float = _field(2.5, "stochastic churn [dpmpp2s]", **NON_NEGATIVE)
    churn_noise: float = _field(1.05, "churn noise scale [dpmpp2s]", **NON_NEGATIVE)
    eta: float = _field(1.0, "stochasticity [ddim]", **NON_NEGATIVE)
    order: int = _field(3, "multistep order [adams_bashforth]", min=1, max=5)
    corrections: int = _field(2, "Langevin corrections [adams_bashforth]", min=0)
    langevin_step: float = _field(0.25, "Langevin step size [adams_bashforth]", **POSITIVE)

    def _check(self) -> None:
        if not self.sigma_min < self.sigma_max:
            raise ConfigError(
                f"sampler.sigma_min = {self.sigma_min!r} must be < "
                f"sampler.sigma_max = {self.sigma_max!r}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class GuidanceConfig(_Validated):
    """``[guidance]``: how proposals are conditioned on the observations."""

    SECTION: ClassVar[str] = "guidance"

    name: str = _field("mmps", "guidance method", choices=("mmps", "dps", "sda"))
    iterations: int = _field(2, "linear-solver iterations", min=1)
    solver: str = _field("cg", "linear solver", choices=("cg", "bicgstab", "gmres"))
    gamma: float = _field(0.01, "covariance regularisation", **NON_NEGATIVE)
    scale: float = _field(1.0, "guidance scale", **NON_NEGATIVE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig(_Validated):
    """``[run]``: cycling and output."""

    SECTION: ClassVar[str] = "run"

    cycles: int = _field(30, "assimilation cycles", min=1)
    burn_in: int = _field(0, "cycles left out of the scores", min=0)
    cycle_hours: float = _field(12.0, "hours between cycles", **POSITIVE)
    start_time: str = _field("2000-01-01T00:00", "initial time (ISO 8601)", check=_iso_datetime)
    output_format: str = _field("zarr", "output format", choices=("zarr", "netcdf"))
    record_ensemble: bool = _field(True, "store the analysis ensemble")
    baseline: bool = _field(True, "also run a free ensemble for comparison")
    profile: bool = _field(
        True, "after the run, time each phase of a cycle on its own (seconds_* in metrics.nc)"
    )

    def _check(self) -> None:
        if not self.burn_in < self.cycles:
            raise ConfigError(f"run.burn_in = {self.burn_in} must be < run.cycles = {self.cycles}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParallelConfig(_Validated):
    """``[parallel]``: how particles are laid out over devices (α and ancestors unchanged;
    fields agree to float32 round-off)."""

    SECTION: ClassVar[str] = "parallel"

    devices: int = _field(1, "devices to shard particles over (0 = every device JAX sees)", min=0)
    particle_batch_size: int = _field(
        0, "at most this many particles per device at once (0 = all)", min=0
    )
    distributed: bool = _field(
        False, "call jax.distributed.initialize() first (multi-host, e.g. under srun)"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig(_Validated):
    """A whole experiment; every field has a default, so an empty TOML file is valid."""

    name: str = _field("experiment", "experiment name")
    seed: int = _field(0, "random seed", min=0)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    truth: TruthConfig = dataclasses.field(default_factory=TruthConfig)
    observations: ObservationsConfig = dataclasses.field(default_factory=ObservationsConfig)
    filter: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    guidance: GuidanceConfig = dataclasses.field(default_factory=GuidanceConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples) in schema order; ``tomllib`` gives it back."""
        return _to_dict(self)

    def to_toml(self) -> str:
        """The config as TOML (deterministic: schema order, every field written)."""
        top, tables = [], []
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in value.items())
                tables.append(f"[{key}]\n{body}")
            else:
                top.append(f"{key} = {_toml_value(value)}\n")
        return "\n".join(["".join(top), *tables])


def _to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = _to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


# --------------------------------------------------------------------------------------------
# TOML output
# --------------------------------------------------------------------------------------------

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(s: str) -> str:
    def escape(c: str) -> str:
        if c in _ESCAPES:
            return _ESCAPES[c]
        return f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c

    return '"' + "".join(escape(c) for c in s) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # finite floats only (validated); repr round-trips exactly
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {_show(value)} as TOML")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _unknown(kind: str, key: str, name: str, valid: Sequence[str], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return ConfigError(f"unknown {kind} {key!r}; did you mean {prefix + close[0]!r}?")
    return ConfigError(f"unknown {kind} {key!r}; valid keys: {', '.join(sorted(valid))}")


def _build(cls: type[_Validated], data: dict[str, Any], prefix: str = "") -> Any:
    """Check ``data`` for unknown keys, recurse into tables, construct (which validates)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        if name not in names:
            kind = "section" if not prefix and isinstance(value, dict) else "key"
            raise _unknown(kind, key, name, names, prefix)
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a table, got {_show(value)}")
            value = _build(hints[name], value, f"{key}.")
        kwargs[name] = value
    return cls(**kwargs)


def _parse_override_value(text: str) -> Any:
    try:
        value = tomllib.loads("v = " + text)["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()
    # No field holds a TOML date/time: keep ``run.start_time=2000-01-01T00:00:00`` a string.
    return text.strip() if isinstance(value, date | time) else value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``"section.key=value"`` overrides set (not yet validated).

    The value is parsed as a TOML value, falling back to the bare string when that fails, so
    ``filter.particles=128`` gives an int and ``filter.method=bootstrap`` a string.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) > 2 or not all(parts):
            raise ConfigError(
                f"malformed override {item!r}: expected 'section.key=value' (or 'key=value')"
            )
        value = _parse_override_value(text)
        if len(parts) == 1:
            data[parts[0]] = value
            continue
        section = data.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"{parts[0]}: expected a table, got {_show(section)}")
        section[parts[1]] = value
    return data


def config_from_dict(data: dict[str, Any], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Validate a nested dict (as from ``tomllib``) after applying ``overrides``."""
    return _build(ExperimentConfig, apply_overrides(data, overrides))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read and validate a TOML config file; ``overrides`` are ``"section.key=value"``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
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
