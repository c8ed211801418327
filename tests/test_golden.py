"""Golden runs: what a run computes does not change under refactoring (tests/golden_runs.py).

Each case reruns a small config and compares every ``metrics.nc`` value (timings excluded)
and every recorded ensemble with the arrays pinned in ``tests/golden/``.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from golden_runs import CASES, GOLDEN, collect, run_case


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("FILTRAX_CACHE_DIR", "")


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_reproduces_its_golden_arrays(name, tmp_path):
    with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as stored:
        expected = {key: stored[key] for key in stored.files}
    pinned_jax = str(expected.pop("jax_version"))
    arrays = collect(run_case(name, tmp_path))
    assert sorted(arrays) == sorted(expected), "the run records other arrays than pinned"
    for key, value in expected.items():
        # Same machine kind and versions: identical up to float32 round-off at most.
        np.testing.assert_allclose(
            arrays[key],
            value,
            rtol=1e-6,
            atol=0,
            equal_nan=True,
            err_msg=f"{name}: {key} differs from tests/golden/{name}.npz (pinned with jax "
            f"{pinned_jax}, running {jax.__version__}); regenerate only for a deliberate "
            "change: python tests/golden_runs.py",
        )
