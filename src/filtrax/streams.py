"""Every random stream of filtrax, named in one place.

Keys are derived, never split: a stream is ``fold_in(parent, STREAM)``. The hierarchy:

* **an experiment** (``root = jax.random.key(seed)``): the truth (:data:`TRUTH`), the
  synthetic observations (:data:`OBSERVATIONS`) and the initial state or ensemble
  (:data:`INITIAL`);
* **a run** of one ensemble: ``fold_in(root, RUN[name])``, the root of its cycles;
* **a cycle** ``k``: ``fold_in(run_root, k)``; its resampling uses :data:`RESAMPLING`, an
  index no particle reaches;
* **a particle** ``i`` in that cycle: ``fold_in(cycle_key, i)``, from which its weight
  (:data:`WEIGHT`), its move (:data:`PROPOSAL`) and an EnKF's perturbed observation
  (:data:`PERTURBATION`) derive. Particle ``i``'s streams therefore do not depend on the
  number of particles.
"""

from __future__ import annotations

#: Per experiment (folded into ``jax.random.key(seed)``).
TRUTH = 101
OBSERVATIONS = 102
#: Both the initial state of a simulated Gaussian field and the members' perturbations about
#: it fold from this one stream (kept so, for the reproducibility of earlier runs).
INITIAL = 103
#: The background forecasts of the observation-space diagnostics (then ``RUN[name]``, then
#: the cycle): drawn apart from every stream a run's results use.
BACKGROUND = 104
#: A random station network (``observations.stations``): folded into
#: ``jax.random.key(observations.network_seed)``, not the experiment's seed, so that one
#: network serves every seed of an experiment.
NETWORK = 105

#: Per run: the root of each recorded ensemble's cycles.
RUN = {"analysis": 1, "baseline": 2}

#: Per cycle key.
RESAMPLING = 2**32 - 1

#: Per particle key.
WEIGHT = 0
PROPOSAL = 1
PERTURBATION = 2
#: A particle's draw of the rejuvenation kernel (:mod:`filtrax.filters.rejuvenation`).
REJUVENATION = 3
