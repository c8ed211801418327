r"""Observation-space diagnostics: what a data-assimilation scientist checks first, truth or not.

For cycle :math:`k` with observations :math:`y` (error variances :math:`R_j`), the
**background** is the ensemble forecast from the previous analysis by the emulator's own
transition (unguided), :math:`x^b_i = \Phi(x^{a,k-1}_i)`, and the **analysis** is the filter's
ensemble after assimilating :math:`y`. In observation space, with
:math:`d^b = y - \overline{h(x^b)}` and :math:`d^a = y - \overline{h(x^a)}` (ensemble means):

* O−B and O−A: the mean and the RMS of :math:`d^b` and :math:`d^a` over a variable's
  observations;
* the spread of :math:`h(x^b)` and :math:`h(x^a)` (RMS over observations of the ensemble
  std, ``ddof = 1``);
* the reduced :math:`\chi^2` of the innovations,
  :math:`\frac1m\sum_j (d^b_j)^2 / (\sigma^{b\,2}_j + R_j)`: 1 when the background spread and
  :math:`R` account for the innovations, above 1 when the ensemble is over-confident;
* Desroziers' check (Desroziers et al. 2005, QJRMS 131:3385): :math:`E[d^a d^b] = R` for an
  optimal analysis, so :math:`\sum_j d^a_j d^b_j / \sum_j R_j` is 1 when the analysis weighs
  the observations as their assumed errors say (below 1: they are trusted more than
  :math:`R` says, or :math:`R` is too large).

The background forecast is one unguided emulator step per particle and cycle, drawn on its
own key stream (:data:`filtrax.streams.BACKGROUND`), so it changes no result of the run; a
free ensemble's background is its own next state. Per-observation means and spreads are
recorded per cycle with the checkpoints (a resumed run keeps them); the per-variable
statistics are computed when the metrics are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import streams
from ..filters.particle import FilterState, FreeEnsemble, forecast_step

#: Per-observation records, each ``(cycle, obs)``.
FIELDS = ("background_mean", "background_spread", "analysis_mean", "analysis_spread")

DESCRIPTIONS = {
    "omb_mean": "mean of observation minus background mean, O-B",
    "omb_rms": "RMS of observation minus background mean, O-B",
    "oma_mean": "mean of observation minus analysis mean, O-A",
    "oma_rms": "RMS of observation minus analysis mean, O-A",
    "spread_background_obs": "background ensemble spread in observation space (RMS of std)",
    "spread_analysis_obs": "analysis ensemble spread in observation space (RMS of std)",
    "chi2_reduced": "reduced chi-square of the innovations, mean (O-B)^2 / (spread_b^2 + R)",
    "desroziers_ratio": "Desroziers' check, sum (O-A)(O-B) / sum R (1: consistent with R)",
}


class Recorder:
    """Background and analysis in observation space, cycle by cycle, for one ensemble."""

    def __init__(self, experiment, filter_, name: str):
        self.free = isinstance(filter_, FreeEnsemble)
        observation_model = experiment.filter_observation
        emulator = filter_.emulator
        proposal = filter_.proposal.unguided()
        root = jax.random.fold_in(jax.random.key(experiment.config.seed), streams.BACKGROUND)
        self.root = jax.random.fold_in(root, streams.RUN[name])
        nothing = jnp.full((observation_model.num_observations,), jnp.nan)

        def observed(particles):
            values = jax.vmap(lambda s: observation_model.predict(emulator.current_frame(s)))(
                particles
            )
            return jnp.mean(values, axis=0), jnp.std(values, axis=0, ddof=1)

        def forecast(state, key):
            moved, _ = forecast_step(
                proposal, filter_.particle_map, state, nothing, observation_model, key
            )
            return observed(moved.particles)

        self._observed = jax.jit(observed)
        self._forecast = jax.jit(forecast)

    def start(self, history: dict, state: FilterState) -> None:
        """The background of cycle 0 (a fresh run)."""
        if not self.free:
            self._put(history, "background", 0, self._forecast(state, self._key(0)))

    def record(self, history: dict, k: int, analysis: FilterState) -> None:
        """Cycle ``k``'s analysis, and the background of cycle ``k + 1`` from it."""
        observed = self._observed(analysis.particles)
        self._put(history, "analysis", k, observed)
        if self.free:  # a free ensemble's background is itself
            self._put(history, "background", k, observed)
        elif k + 1 < history["background_mean"].shape[0]:
            self._put(history, "background", k + 1, self._forecast(analysis, self._key(k + 1)))

    def _key(self, k: int):
        return jax.random.fold_in(self.root, k)

    @staticmethod
    def _put(history: dict, which: str, k: int, moments) -> None:
        mean, spread = (np.asarray(m, np.float64) for m in moments)
        history[f"{which}_mean"][k] = mean
        history[f"{which}_spread"][k] = spread


def empty_history(num_cycles: int, num_observations: int) -> dict[str, np.ndarray]:
    return {field: np.full((num_cycles, num_observations), np.nan) for field in FIELDS}


def observation_variables(experiment) -> tuple[list[str], np.ndarray]:
    """The variable names and each observation's variable index
    (:meth:`~filtrax.observations.model.ObservationModel.reads_channels`)."""
    observation_model = experiment.observation_model
    if experiment.grid is None:
        return ["x"], np.zeros(observation_model.num_observations, np.int64)
    grid = experiment.grid
    names = list(grid.variables)
    index = np.full(observation_model.num_observations, -1, np.int64)
    for v, name in enumerate(names):
        reads = observation_model.reads_channels(
            [c for c, channel in enumerate(grid.channels) if channel.variable == name]
        )
        index[reads] = v
    observed = sorted(set(index[index >= 0].tolist()))
    return [names[v] for v in observed], np.searchsorted(observed, index)


def statistics(experiment, records: list[dict[str, np.ndarray]]) -> dict:
    """The per-variable diagnostics of the module docstring, ``(ensemble, cycle, variable)``."""
    names, variable = observation_variables(experiment)
    y = np.asarray(experiment.observations, np.float64)
    variance = np.asarray(experiment.filter_observation.noise_variance, np.float64)
    variance = np.broadcast_to(variance, y.shape[1:])
    shape = (len(records), y.shape[0], len(names))
    out = {name: np.full(shape, np.nan) for name in DESCRIPTIONS}
    for m, record in enumerate(records):
        d_b = y - record["background_mean"]
        d_a = y - record["analysis_mean"]
        spread_b2 = record["background_spread"] ** 2
        for v in range(len(names)):
            cols = variable == v
            with np.errstate(invalid="ignore", divide="ignore"):
                _fill(out, m, v, d_b[:, cols], d_a[:, cols], spread_b2[:, cols],
                      record["analysis_spread"][:, cols] ** 2, variance[cols])  # fmt: skip
    data_vars = {
        name: (("ensemble", "cycle", "obs_variable"), values, {"long_name": DESCRIPTIONS[name]})
        for name, values in out.items()
    }
    return {"data_vars": data_vars, "coords": {"obs_variable": ("obs_variable", names)}}


def _fill(out, m, v, d_b, d_a, spread_b2, spread_a2, variance) -> None:
    """One variable's statistics per cycle; cycles without an observation stay NaN."""
    seen = np.isfinite(d_b) | np.isfinite(d_a)
    count = seen.sum(axis=1)
    has = count > 0

    def mean(values):
        total = np.where(seen, values, 0.0).sum(axis=1)
        return np.where(has, total / np.maximum(count, 1), np.nan)

    out["omb_mean"][m, :, v] = mean(d_b)
    out["omb_rms"][m, :, v] = np.sqrt(mean(d_b**2))
    out["oma_mean"][m, :, v] = mean(d_a)
    out["oma_rms"][m, :, v] = np.sqrt(mean(d_a**2))
    out["spread_background_obs"][m, :, v] = np.sqrt(mean(spread_b2))
    out["spread_analysis_obs"][m, :, v] = np.sqrt(mean(spread_a2))
    out["chi2_reduced"][m, :, v] = mean(d_b**2 / (spread_b2 + variance))
    out["desroziers_ratio"][m, :, v] = mean(d_a * d_b) / mean(np.broadcast_to(variance, d_b.shape))
