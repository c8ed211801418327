"""Per-cycle scores of a run's ensembles, and ``metrics.nc`` assembled from them.

The runner scores each cycle's ensemble once, on the host copy it writes to zarr
(:func:`score_cycle`), and keeps the scores in the member's history, which its checkpoint
stores. ``metrics.nc`` is then assembled from those histories (:func:`channel_data_vars`,
:func:`rank_data_vars`): no ensemble is read back from zarr, and a resumed run scores only
the cycles it runs. A checkpoint written before the scores were kept has them filled once
from its zarr store when the run resumes (:func:`score_store`), with the same function, so
both paths give the same numbers.

The scores per cycle :math:`k` and channel :math:`c`, with cos-latitude area weights
:math:`w` on a grid (:mod:`filtrax.metrics`): the RMSE of the ensemble mean against the
truth, the spread :math:`\\sqrt{\\overline{\\operatorname{var}_i}}` (unbiased variance), the
fair CRPS, each also unweighted where the authors report it so, and the counts of the
truth's rank among the N members (their sum over cycles is the rank histogram).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from .. import metrics as scores
from ..io.datasets import dataset_to_frames

if TYPE_CHECKING:
    from .factory import Experiment

#: Per-channel scores: ``history[f"score_{name}"]`` has shape (cycle, channel).
PER_CHANNEL = ("rmse", "rmse_unweighted", "spread", "spread_unweighted", "crps")
#: Scores that need the truth.
NEEDS_TRUTH = ("rmse", "rmse_unweighted", "crps")
#: ``history[RANK_COUNTS]`` has shape (cycle, channel, N + 1); NaN for a cycle not scored.
RANK_COUNTS = "rank_counts"
SCORE_FIELDS = (*(f"score_{name}" for name in PER_CHANNEL), RANK_COUNTS)


def num_channels(experiment: Experiment) -> int:
    return 1 if experiment.grid is None else len(experiment.grid.channels)


def empty_scores(num_cycles: int, channels: int, members: int) -> dict[str, np.ndarray]:
    """NaN-filled score records of a member's history (filled by :func:`score_cycle`)."""
    records: dict[str, np.ndarray] = {
        f"score_{name}": np.full((num_cycles, channels), np.nan) for name in PER_CHANNEL
    }
    records[RANK_COUNTS] = np.full((num_cycles, channels, members + 1), np.nan)
    return records


def score_cycle(experiment: Experiment, k: int, frames: np.ndarray, history: dict) -> None:
    """Score cycle ``k``'s ensemble ``frames`` (members first, one frame each) into
    ``history``. Without truth only the spreads are scored."""
    grid = experiment.grid
    members = frames.shape[0]
    if grid is None:
        ensemble = frames.reshape(members, 1, -1)
        weights = None
    else:
        ensemble = frames.reshape(members, *grid.shape)
        weights = grid.area_weights()
    truth = None if experiment.truth is None else experiment.truth[k].reshape(ensemble.shape[1:])
    for c in range(ensemble.shape[1]):
        channel = ensemble[:, c]
        history["score_spread"][k, c] = scores.spread(channel, weights)
        history["score_spread_unweighted"][k, c] = scores.spread(channel)
        if truth is not None:
            history["score_rmse"][k, c] = scores.rmse(channel, truth[c], weights)
            history["score_rmse_unweighted"][k, c] = scores.rmse(channel, truth[c])
            history["score_crps"][k, c] = scores.crps(channel, truth[c], weights)
    if truth is not None:
        ranks = scores.truth_ranks(ensemble, truth).reshape(ensemble.shape[1], -1)
        history[RANK_COUNTS][k] = [scores.rank_histogram(r, members) for r in ranks]


def score_store(experiment: Experiment, store: Path, history: dict, cycles: int) -> None:
    """Score the first ``cycles`` cycles of a zarr ``store`` written by the runner into
    ``history`` (a checkpoint from before the scores were kept); unwritten cycles stay NaN."""
    with xr.open_zarr(store, consolidated=False) as dataset:
        for k in range(cycles):
            frames = dataset_to_frames(dataset.isel(cycle=k).load(), experiment.grid)
            if not np.isnan(frames).all():
                score_cycle(experiment, k, frames, history)


def _rank_histogram(histories: Sequence[Mapping[str, np.ndarray]]):
    """(ensemble, channel, rank) counts summed over the scored cycles; ``None`` when no
    ensemble has a scored cycle (no truth, or nothing run)."""
    counts = [h[RANK_COUNTS] for h in histories]
    scored = [np.isfinite(c).all(axis=(1, 2)) for c in counts]
    if not any(s.any() for s in scored):
        return None
    size = max(c.shape[2] for c in counts)
    hist = np.zeros((len(counts), counts[0].shape[1], size))
    for m, (c, s) in enumerate(zip(counts, scored, strict=True)):
        if s.any():
            hist[m, :, : c.shape[2]] = c[s].sum(axis=0)
    return hist


def channel_data_vars(
    experiment: Experiment, histories: Sequence[Mapping[str, np.ndarray]], descriptions: dict
) -> dict:
    """The per-channel scores of each ensemble's history, as ``metrics.nc`` data variables
    over (ensemble, cycle, channel)."""
    data_vars = {}
    for name in PER_CHANNEL:
        if experiment.truth is None and name in NEEDS_TRUTH:
            continue
        values = np.stack([h[f"score_{name}"] for h in histories])
        data_vars[name] = (
            ("ensemble", "cycle", "channel"),
            values,
            {"long_name": descriptions[name]},
        )
    return data_vars


def rank_data_vars(histories: Sequence[Mapping[str, np.ndarray]]) -> dict:
    """The rank histogram per (ensemble, channel), when one cycle has been scored."""
    hist = _rank_histogram(histories)
    if hist is None:
        return {}
    return {
        "rank_histogram": (
            ("ensemble", "channel", "rank"),
            hist,
            {"long_name": "counts of the truth's rank among the members"},
        )
    }
