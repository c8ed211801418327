"""The training config of a learned emulator (``filtrax train CONFIG``), validated like runs.

>>> cfg = training_config_from_dict({"data": {"setting": "lorenz96"}}, ["training.steps=10"])
>>> cfg.data.setting, cfg.training.steps
('lorenz96', 10)
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from ..experiments.config import (
    NON_NEGATIVE,
    POSITIVE,
    ConfigError,
    SamplerConfig,
    Validated,
    apply_overrides,
    build_section,
    field,
    to_dict,
)

__all__ = [
    "AtmosphereDataConfig",
    "AtmosphereOptimisationConfig",
    "AtmosphereTrainingConfig",
    "DataConfig",
    "HybridTrainingConfig",
    "NetworkConfig",
    "OptimisationConfig",
    "TrainingConfig",
    "UNetConfig",
    "ValidationConfig",
    "load_training_config",
    "training_config_from_dict",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(Validated):
    """``[data]``: the two-scale Lorenz-96 trajectories the emulator learns from."""

    SECTION: ClassVar[str] = "data"

    setting: str = field("wilks05", "two-scale setting", choices=("wilks05", "lorenz96"))
    time_step: float = field(0.05, "model time between emulator steps (Δt)", **POSITIVE)
    spin_up: float = field(20.0, "model time discarded at the start of each trajectory", min=0.0)
    train_trajectories: int = field(32, "independent training trajectories", min=1)
    train_samples: int = field(2000, "states per training trajectory", min=4)
    validation_trajectories: int = field(8, "held-out trajectories (other keys)", min=1)
    validation_samples: int = field(400, "states per held-out trajectory", min=24)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NetworkConfig(Validated):
    """``[network]``: :class:`~filtrax.emulators.lorenz96.CircularStencilNetwork` sizes."""

    SECTION: ClassVar[str] = "network"

    hidden: int = field(128, "hidden width", min=1)
    depth: int = field(2, "residual per-site layers", min=0)
    radius: int = field(4, "first stencil radius (sites)", min=0)
    mix_radius: int = field(2, "second stencil radius (sites)", min=0)
    bottleneck: int = field(16, "features mixed by the second stencil", min=1)


def focused_entries(fraction: float, batch: int) -> int:
    """How many entries of a batch of ``batch`` draw their noise level on the focused range
    (``training.focus_fraction``); the first ones."""
    return round(fraction * batch)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimisationConfig(Validated):
    """``[training]``: the EDM denoising loss and AdamW."""

    SECTION: ClassVar[str] = "training"

    steps: int = field(20000, "optimiser steps", min=1)
    batch_size: int = field(256, "transitions per step", min=1)
    learning_rate: float = field(1e-3, "peak learning rate (cosine decay)", **POSITIVE)
    warmup: int = field(500, "linear warm-up steps", min=0)
    weight_decay: float = field(1e-4, "AdamW weight decay", **NON_NEGATIVE)
    clip_norm: float = field(1.0, "global gradient-norm clip", **POSITIVE)
    ema: float = field(0.999, "decay of the weights' exponential moving average", min=0.0, max=1.0)
    sigma_min: float = field(0.02, "smallest training noise level", **POSITIVE)
    sigma_max: float = field(88.0, "largest training noise level", **POSITIVE)
    rho: float = field(7.0, "exponent of the noise-level distribution", **POSITIVE)
    focus_fraction: float = field(
        0.0,
        "fraction of each batch whose noise levels are drawn from [sigma_min, "
        "focus_sigma_max] instead (0 = off)",
        min=0.0,
        max=1.0,
    )
    focus_sigma_max: float = field(
        1.0, "largest noise level of the focused part of each batch", **POSITIVE
    )
    chunk: int = field(250, "steps per compiled chunk (progress and checkpoint unit)", min=1)
    checkpoint_every: int = field(2000, "steps between checkpoints", min=1)
    stop_after: int = field(
        0,
        "end the run at this step (0 = training.steps) and card the weights reached; the "
        "learning-rate schedule still spans training.steps, so a longer run can resume",
        min=0,
    )

    def _check(self) -> None:
        if not self.sigma_min < self.sigma_max:
            raise ConfigError(
                f"training.sigma_min = {self.sigma_min!r} must be < "
                f"training.sigma_max = {self.sigma_max!r}"
            )
        if self.focus_fraction > 0 and not (
            self.sigma_min < self.focus_sigma_max <= self.sigma_max
        ):
            raise ConfigError(
                f"training.focus_sigma_max = {self.focus_sigma_max!r} must lie in "
                f"(training.sigma_min, training.sigma_max] = ({self.sigma_min!r}, "
                f"{self.sigma_max!r}] when training.focus_fraction > 0"
            )
        if self.focus_fraction > 0 and focused_entries(self.focus_fraction, self.batch_size) == 0:
            raise ConfigError(
                f"training.focus_fraction = {self.focus_fraction!r} selects no entry of a batch "
                f"of training.batch_size = {self.batch_size}; expected 0 (off) or more than "
                f"{0.5 / self.batch_size:.3g}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValidationConfig(Validated):
    """``[validation]``: the scores written to the model card (held-out trajectories)."""

    SECTION: ClassVar[str] = "validation"

    members: int = field(16, "ensemble members of the free forecasts", min=2)
    initial_states: int = field(64, "held-out initial states per score", min=1)
    leads: tuple[int, ...] = field([1, 5, 20], "forecast leads in steps", min=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingConfig(Validated):
    """A whole training run; ``output`` is the folder for weights, card and checkpoints."""

    name: str = field("lorenz96_wilks05_dt0.05", "emulator (card) name")
    description: str = field("", "one line for the model card")
    seed: int = field(0, "seed of data, initialisation and training", min=0)
    output: str = field("runs/train", "output folder (weights, card, checkpoint)")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    training: OptimisationConfig = dataclasses.field(default_factory=OptimisationConfig)
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AtmosphereDataConfig(Validated):
    """``[data]``: zarr stores written by ``filtrax heldsuarez-data`` (train and held out)."""

    SECTION: ClassVar[str] = "data"

    train: str = field("runs/data/hs_train.zarr", "training store")
    validation: str = field("runs/data/hs_test.zarr", "held-out store (another run)")
    max_train_states: int = field(0, "use only the first N training states (0 = all)", min=0)
    truth_segment_start: int = field(500, "first held-out state of the bundled truth", min=1)
    truth_segment_length: int = field(40, "held-out states in the bundled truth (0 = none)", min=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UNetConfig(Validated):
    """``[network]``: :class:`~filtrax.emulators.sphere_unet.SphereUNet` sizes."""

    SECTION: ClassVar[str] = "network"

    widths: tuple[int, ...] = field([32, 64, 128], "features per resolution level", min=1)
    embed: int = field(64, "noise-embedding width", min=1)
    sigma_data: tuple[float, ...] = field(
        [1.0],
        "EDM sigma_data of the normalised residual: one value for every channel (GenCast: 1), "
        "or one per channel in the grid's order",
        **POSITIVE,
    )
    noisy_path: int = field(
        0,
        "bands of noise levels of a linear path from the noisy input to the output, one "
        "3 x 3 stencil each (filtrax.emulators.sphere_unet.NoisyInputPath); 0 = none",
        min=0,
    )
    noisy_path_size: int = field(
        3, "width in cells of the noisy-input path's stencils (odd)", choices=(1, 3, 5, 7)
    )
    history: int = field(
        2,
        "states the network is conditioned on: 2 (GenCast: x^{k-1} and x^k) or 1 (x^k only, "
        "given in both input slots, so that two-state weights can be fine-tuned to it)",
        choices=(1, 2),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AtmosphereOptimisationConfig(OptimisationConfig):
    """``[training]`` of an atmosphere emulator: the EDM loss, AdamW, and two more options."""

    condition_noise: float = field(
        0.0,
        "std of Gaussian noise added to the two conditioning frames, in units of each "
        "channel's 12 h difference std; the target is the clean next state, so the network "
        "learns to pull a slightly off-manifold state back instead of carrying its noise on",
        **NON_NEGATIVE,
    )
    initialise_from: str = field(
        "",
        "start from these weights (an emulator .npz with its .toml card, e.g. a 'filtrax "
        "train' output) instead of a random network: fine-tuning",
    )
    steps: int = field(
        20000, "optimiser steps (0: none, with initialise_from: graft, fit and card)", min=0
    )
    path_fit_samples: int = field(
        0,
        "after the optimiser, fit the noisy-input path's stencils by least squares on this "
        "many (transition, sigma, noise) draws (filtrax.training.noisy_path; 0 = no fit)",
        min=0,
    )

    def _check(self) -> None:
        super()._check()
        if self.steps == 0 and not self.initialise_from:
            raise ConfigError(
                "training.steps = 0 needs training.initialise_from (weights to start from)"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AtmosphereTrainingConfig(Validated):
    """Training of a gridded atmosphere emulator (``family = "atmosphere"``)."""

    family: str = field("atmosphere", "emulator family", choices=("atmosphere",))
    name: str = field("hs_t21_16x32", "emulator (card) name")
    description: str = field("", "one line for the model card")
    seed: int = field(0, "seed of initialisation and training", min=0)
    output: str = field("runs/train/hs", "output folder (weights, card, checkpoint)")
    data: AtmosphereDataConfig = dataclasses.field(default_factory=AtmosphereDataConfig)
    network: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    training: AtmosphereOptimisationConfig = dataclasses.field(
        default_factory=AtmosphereOptimisationConfig
    )
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)

    def _check(self) -> None:
        if self.training.path_fit_samples and not self.network.noisy_path:
            raise ConfigError(
                f"training.path_fit_samples = {self.training.path_fit_samples} needs a "
                "noisy-input path to fit: set network.noisy_path >= 2"
            )
        if self.network.noisy_path == 1:
            raise ConfigError("network.noisy_path = 1; expected 0 (none) or >= 2 terms")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HybridDataConfig(Validated):
    """``[data]`` of a hybrid emulator: 32 × 64 stores written by ``filtrax heldsuarez-data``."""

    SECTION: ClassVar[str] = "data"

    train: str = field("runs/data/hs32_train.zarr", "training store (all 8 levels)")
    validation: str = field("runs/data/hs32_heldout.zarr", "held-out store (another run)")
    max_train_states: int = field(0, "use only the first N training states (0 = all)", min=0)
    pairs: int = field(2000, "training pairs (x^k, x^k+1), spread evenly over the states", min=8)
    truth_segment_start: int = field(500, "first held-out state of the bundled truth", min=1)
    truth_segment_length: int = field(34, "held-out states in the bundled truth (0 = none)", min=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaseModelConfig(Validated):
    """``[base]``: the dynamical core of the mean path."""

    SECTION: ClassVar[str] = "base"

    truth_grid: str = field("T21", "dinosaur spectral grid of the forecast", choices=("T21",))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResidualConfig(Validated):
    """``[residual]``: the structured residual (:mod:`filtrax.emulators.hybrid`)."""

    SECTION: ClassVar[str] = "residual"

    band_limit: int = field(0, "total wavenumbers l < L of the residual (0 = n_lon / 2)", min=0)
    winds: bool = field(True, "winds from an isotropic streamfunction and velocity potential")
    balance: bool = field(True, "mass fields' balanced part regressed on the streamfunction")

    def _check(self) -> None:
        if self.balance and not self.winds:
            raise ConfigError("residual.balance = true needs residual.winds = true")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitConfig(Validated):
    """``[fit]``: how the training forecasts are written."""

    SECTION: ClassVar[str] = "fit"

    chunk: int = field(64, "training pairs forecast per resumable chunk", min=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HybridTrainingConfig(Validated):
    """Fitting of a hybrid atmosphere emulator (``family = "hybrid_atmosphere"``)."""

    family: str = field("hybrid_atmosphere", "emulator family", choices=("hybrid_atmosphere",))
    name: str = field("hs_t21_32x64_hybrid", "emulator (card) name")
    description: str = field("", "one line for the model card")
    output: str = field("runs/train/hs32_hybrid", "output folder (weights, card, forecasts)")
    data: HybridDataConfig = dataclasses.field(default_factory=HybridDataConfig)
    base: BaseModelConfig = dataclasses.field(default_factory=BaseModelConfig)
    residual: ResidualConfig = dataclasses.field(default_factory=ResidualConfig)
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


#: ``family`` -> the training config it selects (the default family is ``lorenz96``).
TRAINING_FAMILIES: dict[str, type] = {
    "lorenz96": TrainingConfig,
    "atmosphere": AtmosphereTrainingConfig,
    "hybrid_atmosphere": HybridTrainingConfig,
}


def training_config_from_dict(
    data: dict[str, Any], overrides: Sequence[str] = ()
) -> TrainingConfig | AtmosphereTrainingConfig | HybridTrainingConfig:
    """The training config of ``data``, of the class its ``family`` selects."""
    data = apply_overrides(data, overrides)
    family = data.get("family", "lorenz96")
    if family not in TRAINING_FAMILIES:
        raise ConfigError(f"family = {family!r}; expected one of {', '.join(TRAINING_FAMILIES)}")
    config = TRAINING_FAMILIES[family]
    if config is TrainingConfig:
        data = {k: v for k, v in data.items() if k != "family"}
    return build_section(config, data)


def load_training_config(
    path: str | Path, overrides: Sequence[str] = ()
) -> TrainingConfig | AtmosphereTrainingConfig | HybridTrainingConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    return training_config_from_dict(data, overrides)
