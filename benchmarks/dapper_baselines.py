"""DAPPER's own filters on our two-scale Lorenz-96 truth and observations.

:func:`run_dapper_baselines` runs, for each method × model × ensemble size, a data
assimilation method of DAPPER (Raanes et al., ``dapper`` 1.7,
https://github.com/nansencenter/DAPPER) on *our* truth and *our* observations, and scores
the analyses like our own filters.

Settings: ``dapper.mods.LorenzUV.wilks05`` (K = 8, J = 32, F = 20, obs variance 0.1) and
``dapper.mods.LorenzUV.lorenz96`` (K = 36, J = 10, F = 10, obs variance 1.0).

Models (the forecast model the DAPPER filter uses):

* ``"full"``: the module's ``HMM_full`` dynamics, the full two-scale model [X, Y] with RK4 at
  dt = 0.005 (10 steps per cycle); it knows the true dynamics, so it is an upper bound.
* ``"truncated"``: the module's ``HMM_trunc`` dynamics, slow variables only, RK4 at dt = 0.05
  with ``LUV.dxdt_parameterized``. wilks05 sets its own parameterisation (the order-1
  polynomial ``0.74 + 0.82 x``); lorenz96 sets none, so here ``LUV.prmzt = 0`` (order −1, the
  plain truncated model; this mutates that DAPPER module's ``LUV``).

Conventions (DAPPER 1.7, ``dapper.tools.chronos.Chronology``): ``xx`` has ``K + 1`` rows
(``xx[k]`` at time ``k·dt``, row 0 the initial state), ``yy`` has ``Ko + 1`` rows, and
``yy[ko]`` is valid at time ``(ko + 1)·dto`` (no observation at t = 0). With
``K = dko·num_cycles`` DAPPER's ``tseq.Ko`` is ``num_cycles − 1``, so ``yy = observations``
unchanged and DAPPER's ``yy[ko]`` is our cycle ``ko + 1``. The analysis statistics
``stats.mu.a`` and ``stats.spread.a`` (per-variable weighted std, unbiased variance) have
``Ko + 1`` rows, row ``ko`` for cycle ``ko + 1``. The observation operator is
``partial_Id_Obs(Nx, observed_sites)`` with noise ``obs_variance``.

Methods: ``EnKF_N(N, xN=2)`` (finite-size EnKF, tuning free); ``LETKF(N, infl, rot=True,
loc_rad)`` with ``infl`` = 1.02 for the full model and 1.2 for the truncated one (1.02 loses
track there: rmse 2.1 on wilks05 at N = 16, against 0.24 with 1.2, from a small sweep), with a
Gaspari-Cohn taper on the periodic ring of K sites, ``loc_rad`` = 4 sites
for lorenz96 and ∞ (global) for wilks05, whose ring is only 4 sites across; in the full model
each fast variable Y_{kJ+j} sits at its slow site k and every site (X_k with its J fast
variables) is one local analysis; ``PartFilt(N, NER=0.5, reg)``, the bootstrap PF that
resamples when ESS ≤ N/2 and jitters duplicates with ``reg`` × Scott's bandwidth × the
weighted ensemble covariance. ``reg`` (DAPPER suggests 0.8-2.4) from a small sweep on one
200-cycle wilks05 truth: 2.0 for the truncated model (1.0 collapses, rmse ≈ 7 at N = 256;
2.0 gives ≈ 0.2), 0.5 for the full model, where a larger jitter throws the fast variables
off their attractor and RK4 at dt = 0.005 overflows ("Ensemble not finite.").

Initial ensemble: ``GaussRV(mu=xx[0], C=0.01)``, DAPPER's default spread but centred on our
initial state. This gives the DAPPER filters a near-perfect start; the burn-in removes it from
the scores. Scores over the slow variables X only, analysis values, cycles after ``burn_in``:
rmse = time mean of the RMS (over sites) error of the mean; spread = time mean of the RMS
spread; crps = time mean of the site-mean CRPS of the *Gaussian approximation* N(mu, spread²)
in closed form (computed from the stored mean and spread, not from the ensemble);
ms_per_cycle = wall clock of ``xp.assimilate`` (including DAPPER's per-cycle statistics) per
cycle. DAPPER's RNG is reset with ``set_seed(seed + 1)`` before each run (DAPPER refuses 0).

Limits: NumPy on the CPU, one process. No tuning per N (the inflation and jitter above were
chosen once on a smoke truth, at N = 16 and 256). A bootstrap PF in 8-36 slow (or 264-396
full) dimensions collapses for small N. Importing DAPPER creates ``~/dpr_data`` and may print
a ``dpr_config.yaml`` warning; ``MPLBACKEND`` defaults to Agg. A run that raises gives a row
with NaN scores and the error in ``note``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time

import numpy as np

from filtrax.metrics import gaussian_crps

FULL_DT, TRUNCATED_DT = 0.005, 0.05  # the modules' RK4 steps of the full and truncated models
LOC_RAD = {"wilks05": np.inf, "lorenz96": 4.0}  # LETKF localisation radius, in sites
INFL = {"truncated": 1.2, "full": 1.02}  # LETKF inflation: the truncated model has model error
PF_NER = 0.5
PF_REG = {"truncated": 2.0, "full": 0.5}  # regularisation jitter factor
X0_VARIANCE = 0.01
METHODS = ("EnKF_N", "LETKF", "PartFilt")


@contextlib.contextmanager
def _quiet_dapper():
    """Switch off DAPPER's tqdm progress bars and terminal interaction, then restore."""
    import dapper.tools.progressbar as pb

    saved = pb.disable_progbar, pb.disable_user_interaction
    pb.disable_progbar = pb.disable_user_interaction = True
    try:
        yield
    finally:
        pb.disable_progbar, pb.disable_user_interaction = saved


def _full_localizer(K: int, J: int, sites: np.ndarray):
    """Localizer for [X, Y]: Y_{kJ+j} sits at slow site k; one local analysis per site."""
    from dapper.tools.localization import localization_setup, pairwise_distances

    state_site = np.concatenate([np.arange(K), np.repeat(np.arange(K), J)])
    batches = [np.concatenate([[k], K + k * J + np.arange(J)]) for k in range(K)]

    def y2x_distances():
        return pairwise_distances(sites[:, None], state_site[:, None], domain=(K,))

    return localization_setup(y2x_distances, batches)


def _module(setting: str):
    """Import DAPPER's settings module (with the Agg backend unless MPLBACKEND is set)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    return importlib.import_module(f"dapper.mods.LorenzUV.{setting}")


def _build_hmm(setting, model, x0, sites, obs_variance, num_cycles, time_step):
    """A DAPPER HMM with the module's dynamics, our time axis, obs operator and X0."""
    import dapper.mods as modelling
    from dapper.tools.localization import nd_Id_localization

    mod = _module(setting)
    K, J = mod.LUV.nU, mod.LUV.J
    if model == "full":
        src, localizer = mod.HMM_full, _full_localizer(K, J, sites)
        note = "full two-scale model, RK4 dt=0.005"
    else:
        src, localizer = mod.HMM_trunc, nd_Id_localization((K,), obs_inds=sites, periodic=True)
        note = "truncated model, RK4 dt=0.05, "
        if setting == "lorenz96":  # the module sets no parameterisation
            mod.LUV.prmzt = lambda x, t: 0.0
            note += "prmzt=0 (order -1: plain truncated model; DAPPER's lorenz96 sets none)"
        else:  # what the module itself sets
            mod.LUV.prmzt = lambda x, t: mod.polynom_prmzt(x, t, 1)
            note += "prmzt=polynom_prmzt order 1 (0.74+0.82x, DAPPER's wilks05 default)"
    nx = src.Dyn.M
    if x0.shape != (nx,):
        raise ValueError(f"initial state has shape {x0.shape}, DAPPER's {model} model {nx}")
    dko = round(time_step / src.tseq.dt)
    tseq = modelling.Chronology(dt=src.tseq.dt, dko=dko, K=dko * num_cycles)
    obs = modelling.partial_Id_Obs(nx, sites)
    obs["noise"] = float(obs_variance)
    obs["localizer"] = localizer
    x0_rv = modelling.GaussRV(mu=x0, C=X0_VARIANCE)
    hmm = modelling.HiddenMarkovModel(src.Dyn, obs, tseq, x0_rv, name=f"{src.name}:ours")
    return hmm, dko, note


def _make_xp(method: str, N: int, setting: str, model: str):
    import dapper.da_methods as da

    if method == "EnKF_N":
        return da.EnKF_N(N=N, xN=2.0), "EnKF_N(xN=2)"
    if method == "LETKF":
        rad = LOC_RAD[setting]
        xp = da.LETKF(N=N, infl=INFL[model], rot=True, loc_rad=rad)
        return xp, f"LETKF(infl={INFL[model]}, rot=True, loc_rad={rad} sites, GC)"
    if method == "PartFilt":
        reg = PF_REG[model]
        return da.PartFilt(N=N, NER=PF_NER, reg=reg), f"PartFilt(NER={PF_NER}, reg={reg})"
    raise ValueError(f"unknown method {method!r}")


def _run_one(
    setting, method, model, N, full_truth, yy, sites, obs_variance, burn_in, seed, time_step
):
    from dapper.tools.seeding import set_seed

    num_cycles, K = yy.shape[0], _module(setting).LUV.nU
    stride = round(TRUNCATED_DT / FULL_DT)
    xx = full_truth if model == "full" else full_truth[::stride, :K]
    hmm, dko, model_note = _build_hmm(
        setting, model, xx[0], sites, obs_variance, num_cycles, time_step
    )
    if xx.shape[0] != hmm.tseq.K + 1 or yy.shape[0] != hmm.tseq.Ko + 1:
        raise ValueError(f"xx {xx.shape} / yy {yy.shape} do not fit DAPPER's {hmm.tseq}")
    xp, xp_note = _make_xp(method, N, setting, model)
    note = f"{xp_note}; {model_note}; X0=N(x_true0, {X0_VARIANCE}I)"
    set_seed(seed + 1)
    tic = time.perf_counter()
    with _quiet_dapper():
        xp.assimilate(hmm, xx, yy, liveplots=False)
    ms = 1e3 * (time.perf_counter() - tic) / num_cycles
    mu = np.asarray(xp.stats.mu.a)[burn_in:, :K]
    sd = np.asarray(xp.stats.spread.a)[burn_in:, :K]
    truth = xx[dko::dko, :K][burn_in:]
    rmse = float(np.mean(np.sqrt(np.mean((mu - truth) ** 2, axis=1))))
    spread = float(np.mean(np.sqrt(np.mean(sd**2, axis=1))))
    crps = float(np.mean(gaussian_crps(mu, sd, truth)))
    if not np.isfinite([rmse, spread, crps]).all():
        note += "; diverged (non-finite scores)"
    return dict(rmse=rmse, spread=spread, crps=crps, ms_per_cycle=ms, note=note)


def run_dapper_baselines(
    setting: str,
    full_truth: np.ndarray,
    observations: np.ndarray,
    observed_sites: np.ndarray,
    obs_variance: float,
    burn_in: int,
    ensemble_sizes: list[int],
    seed: int = 0,
    methods: tuple[str, ...] = ("EnKF_N", "LETKF", "PartFilt"),
    models: tuple[str, ...] = ("truncated", "full"),
    time_step: float = 0.05,
) -> list[dict]:
    """Run DAPPER's filters (method × model × N) on our truth and observations.

    ``full_truth``: ``(m·num_cycles + 1, K + K·J)`` two-scale state every dt = 0.005 with
    ``m = time_step / 0.005`` (row 0 the initial state, row m·k cycle k; ``time_step`` a
    multiple of 0.05); ``observations``: ``(num_cycles, p)``, row k - 1 valid at time
    ``time_step·k``, ``y = X[observed_sites] + noise`` with variance ``obs_variance``. Returns
    one dict per run: method, model, N, rmse, spread, crps, ms_per_cycle, note (see the
    module docstring); a run that raises gives NaN scores and the error in ``note``.
    """
    if setting not in LOC_RAD:
        raise ValueError(f"setting must be one of {sorted(LOC_RAD)}, got {setting!r}")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    luv = _module(setting).LUV
    K, J = luv.nU, luv.J
    full_truth = np.asarray(full_truth, dtype=float)
    yy = np.asarray(observations, dtype=float)
    sites = np.asarray(observed_sites, dtype=int).reshape(-1)
    num_cycles = yy.shape[0]
    steps = round(time_step / FULL_DT)
    if abs(time_step / TRUNCATED_DT - round(time_step / TRUNCATED_DT)) > 1e-9:
        raise ValueError(f"time_step={time_step} must be a multiple of {TRUNCATED_DT}")
    if full_truth.shape != (steps * num_cycles + 1, K * (J + 1)):
        raise ValueError(
            f"full_truth {full_truth.shape}: expected ({steps}·{num_cycles} + 1, {K}·{J + 1})"
        )
    if yy.ndim != 2 or yy.shape[1] != sites.size or sites.min() < 0 or sites.max() >= K:
        raise ValueError(f"observations {yy.shape} / observed_sites {sites} do not fit K={K}")
    if not 0 <= burn_in < num_cycles:
        raise ValueError(f"burn_in={burn_in} must be in [0, {num_cycles})")
    if set(methods) - set(METHODS) or set(models) - {"truncated", "full"}:
        raise ValueError(f"methods {methods} / models {models}: choose from {METHODS}")
    data = (full_truth, yy, sites, obs_variance, burn_in, seed, time_step)
    rows = []
    for method in methods:
        for model in models:
            for N in ensemble_sizes:
                row = {"method": method, "model": model, "N": int(N)}
                try:
                    row |= _run_one(setting, method, model, int(N), *data)
                except Exception as err:  # one failed run must not end the sweep
                    nan = float("nan")
                    row |= dict(rmse=nan, spread=nan, crps=nan, ms_per_cycle=nan)
                    row["note"] = f"failed: {type(err).__name__}: {err}"
                rows.append(row)
    return rows
