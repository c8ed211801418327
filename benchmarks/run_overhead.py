"""Cost of the product layer per cycle: progress bar and per-cycle writes vs the cycle itself.

For a config (default: the gridded demo), each cycle is timed in three parts, side by side
in one process, after a warm-up cycle that pays for compilation:

* ``cycle``: the assimilation step (one chunk of ``filtrax.assimilate``);
* ``writes``: the zarr region write of the analysis ensemble and the atomic checkpoint;
* ``progress``: the tqdm update with its ESS / α / RMSE postfix.

The target is (writes + progress) ≤ 5 % of the cycle. Run:
``python benchmarks/run_overhead.py [CONFIG] [--cycles K]``.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from filtrax.driver import SaveAt, assimilate
from filtrax.experiments.config import load_config
from filtrax.experiments.factory import build_experiment
from filtrax.experiments.runner import (
    HISTORY_FIELDS,
    _preallocate,
    _save_checkpoint,
    _write_cycle,
    config_digest,
)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/gaussian_field/demo.toml"))
    parser.add_argument("--cycles", type=int, default=8)
    args = parser.parse_args()
    config = load_config(args.config, [f"run.cycles={args.cycles + 1}", "run.burn_in=0"])
    experiment = build_experiment(config)
    filter_ = experiment.filter
    state = filter_.init(experiment.initial_particles)
    history = {k: np.full(args.cycles + 1, np.nan) for k in HISTORY_FIELDS}
    root = jax.random.key(config.seed)
    digest = config_digest(config)
    times = {"cycle": [], "writes": [], "progress": []}
    with tempfile.TemporaryDirectory() as tmp:
        store, checkpoint = Path(tmp) / "analysis.zarr", Path(tmp) / "state.npz"
        _preallocate(store, experiment, state.log_weights.shape[0])
        bar = tqdm(total=args.cycles + 1, file=io.StringIO(), mininterval=0)

        def record(chunk) -> None:
            """What the runner does after each cycle, timed in its two parts."""
            k = chunk.first_cycle
            ensemble = np.asarray(chunk.analysis)[0]
            tic = time.perf_counter()
            _write_cycle(store, experiment, k, ensemble)
            _save_checkpoint(checkpoint, chunk.final_state, history, digest)
            toc = time.perf_counter()
            error = float(np.sqrt(np.mean((ensemble.mean(0) - experiment.truth[k]) ** 2)))
            bar.set_postfix({"ESS": "1.0", "alpha": "1", "RMSE": f"{error:.3g}"}, refresh=False)
            bar.update(1)
            if k > 0:  # cycle 0 includes compilation
                times["cycle"].append(chunk.seconds)
                times["writes"].append(toc - tic)
                times["progress"].append(time.perf_counter() - toc)

        assimilate(
            filter_,
            state.particles,
            experiment.observations[: args.cycles + 1],
            experiment.observation_model,
            key=root,
            save=SaveAt(moments=False),
            chunk_cycles=1,
            callback=record,
        )
        bar.close()
    median = {k: float(np.median(v)) for k, v in times.items()}
    print(f"config {args.config}: N={config.filter.particles}, frame {experiment.frame_shape}")
    print(f"{'part':<10} {'median s':>10} {'ratio to cycle':>15}")
    for part in ("cycle", "writes", "progress"):
        print(f"{part:<10} {median[part]:10.4f} {median[part] / median['cycle']:15.3f}")
    overhead = (median["writes"] + median["progress"]) / median["cycle"]
    print(f"overhead (writes + progress) / cycle: {overhead:.3f}  (target <= 0.05)")


if __name__ == "__main__":
    main()
