"""Latent noise: GenCast's spherical white noise (unit variance, band-limited, flat spectrum,
spatially correlated), explicit keys, bad grids, and its wiring into the emulator and config."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import eval_legendre

from filtrax.diffusion.latent_noise import (
    GaussianNoise,
    SphericalWhiteNoise,
    _synthesis,
    latent_noise_from_name,
)
from filtrax.grid import Channel, GridSpec

HS = GridSpec.regular(16, 32, [Channel("temperature")])  # the Held–Suarez grid, L = 16
LON_16 = tuple(22.5 * np.arange(16))
POLES_LAT = tuple(np.linspace(-90.0, 90.0, 9))  # equiangular with poles (GenCast's kind), L = 8
GAUSS_LAT = tuple(np.rad2deg(np.arcsin(np.polynomial.legendre.leggauss(8)[0])))  # L = 8
NUM_DRAWS = 4000
TEMPLATE = jnp.zeros((3, 16, 32))  # one shape for the small HS draws: one compilation
ROOT = Path(__file__).parents[1]


def draws(noise, num: int = NUM_DRAWS) -> np.ndarray:
    """``num`` independent fields ``(num, lat, lon)`` from one key (one per leading index)."""
    template = jnp.zeros((num, len(noise.latitudes), len(noise.longitudes)))
    return np.asarray(noise(jax.random.key(0), template), np.float64)


@pytest.fixture(scope="module")
def hs_noise() -> SphericalWhiteNoise:
    return SphericalWhiteNoise.from_grid(HS)


@pytest.fixture(scope="module")
def hs_draws(hs_noise) -> np.ndarray:
    return draws(hs_noise)


@pytest.fixture(scope="module")
def gauss_noise() -> SphericalWhiteNoise:
    return SphericalWhiteNoise(GAUSS_LAT, LON_16)


# --------------------------------------------------------------------------------------------
# Explicit keys, shapes and transformations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["spherical", "gaussian"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_draws_depend_only_on_the_key_and_keep_shape_and_dtype(kind, dtype):
    noise = latent_noise_from_name(kind, HS)
    template = TEMPLATE.astype(dtype)
    a = noise(jax.random.key(1), template)
    assert a.shape == template.shape and a.dtype == template.dtype
    np.testing.assert_array_equal(a, noise(jax.random.key(1), template))
    assert not np.allclose(a, noise(jax.random.key(2), template))
    assert not np.allclose(a[0], a[1])  # every leading index is an independent field


def test_works_under_jit_vmap_and_grad(hs_noise):
    key = jax.random.key(5)
    eager = hs_noise(key, TEMPLATE)
    np.testing.assert_allclose(jax.jit(hs_noise)(key, TEMPLATE), eager, rtol=0, atol=1e-6)
    keys = jax.random.split(key, 2)
    batched = jax.vmap(hs_noise, in_axes=(0, None))(keys, TEMPLATE)
    stacked = jnp.stack([hs_noise(k, TEMPLATE) for k in keys])
    np.testing.assert_allclose(batched, stacked, rtol=0, atol=1e-6)
    # Traceable inside a differentiated function (the draw itself does not depend on x).
    grad = jax.grad(lambda x: jnp.sum(hs_noise(key, x) * x))(TEMPLATE)
    np.testing.assert_allclose(grad, eager, rtol=0, atol=1e-6)


def test_descending_latitudes_give_the_flipped_field(hs_noise):
    south_first = hs_noise(jax.random.key(3), TEMPLATE)
    north_first = SphericalWhiteNoise(HS.latitudes[::-1], HS.longitudes)
    np.testing.assert_array_equal(north_first(jax.random.key(3), TEMPLATE), south_first[:, ::-1])


# --------------------------------------------------------------------------------------------
# Unit marginal variance
# --------------------------------------------------------------------------------------------


def check_unit_variance(noise: SphericalWhiteNoise, fields: np.ndarray) -> None:
    # Analytically: the variance is the squared norm of each grid point's synthesis row.
    s = _synthesis(noise.latitudes, noise.longitudes, noise.total_wavenumbers)
    rows = np.einsum("im,mjl->jiml", s.fourier, s.legendre)
    np.testing.assert_allclose((rows**2).sum(axis=(2, 3)), 1.0, rtol=0, atol=1e-12)
    # Monte Carlo: per latitude, the band mean of ε² per draw is i.i.d. over draws, so its
    # sample std gives the standard error whatever the correlation along the band.
    band = (fields**2).mean(axis=2)  # (draw, lat)
    error = band.std(axis=0, ddof=1) / np.sqrt(band.shape[0])
    assert np.all(np.abs(band.mean(axis=0) - 1.0) < 4 * error), band.mean(axis=0)


def test_unit_variance_on_the_cell_centred_held_suarez_grid(hs_noise, hs_draws):
    check_unit_variance(hs_noise, hs_draws)


def test_unit_variance_on_a_grid_with_poles():
    noise = SphericalWhiteNoise(POLES_LAT, LON_16)
    fields = draws(noise)
    check_unit_variance(noise, fields)
    for row in (0, -1):  # every longitude of a pole row is the pole itself
        assert np.ptp(fields[:, row], axis=1).max() < 1e-5


# --------------------------------------------------------------------------------------------
# Band limit and flat spectrum (Gaussian grid: dinosaur's analysis is exact there)
# --------------------------------------------------------------------------------------------


def spectrum_check(noise: SphericalWhiteNoise, fields: np.ndarray) -> tuple[float, np.ndarray]:
    """(largest relative residual of fields outside ``l < L``, spectrum deviation in SEs).

    The residual is ``|x - synthesis(analysis(x))| / |x|``; the spectrum is the power per
    total wavenumber, ``Σ_m c_lm² / 4π`` averaged over draws, whose standard error about
    ``1/L`` is ``(1/L) sqrt(2 / ((2l + 1) N))`` for the flat spectrum.
    """
    grid, L = noise.spectral_grid, noise.band_limit
    nodal = jnp.asarray(np.swapaxes(fields, -1, -2))  # dinosaur's (lon, lat) order
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        modal = grid.to_modal(nodal)
        back = np.asarray(grid.to_nodal(modal))
    residual = np.linalg.norm(back - nodal, axis=(1, 2)) / np.linalg.norm(nodal, axis=(1, 2))
    power = (np.asarray(modal, np.float64) ** 2).sum(axis=1).mean(axis=0) / (4 * np.pi)
    degree = np.arange(L)
    error = (1 / L) * np.sqrt(2 / ((2 * degree + 1) * fields.shape[0]))
    return float(residual.max()), (power - 1 / L) / error


def test_spherical_noise_is_band_limited_with_a_flat_spectrum(gauss_noise):
    assert gauss_noise.spectral_grid.latitude_spacing == "gauss" and gauss_noise.band_limit == 8
    residual, deviation = spectrum_check(gauss_noise, draws(gauss_noise, num=2000))
    assert residual < 1e-5  # no power at l >= L
    assert np.all(np.abs(deviation) < 5), deviation  # 1/L on every total wavenumber


def test_iid_grid_noise_fails_the_band_limit_and_flat_spectrum_checks(gauss_noise):
    iid = np.asarray(GaussianNoise()(jax.random.key(0), jnp.zeros((2000, 8, 16))), np.float64)
    residual, deviation = spectrum_check(gauss_noise, iid)
    assert residual > 0.3  # 128 grid values carry power far beyond the 64 harmonics
    assert np.max(np.abs(deviation)) > 20  # white per coefficient: power grows like 2l + 1


# --------------------------------------------------------------------------------------------
# Spatial correlation
# --------------------------------------------------------------------------------------------


def angle(lat1, lon1, lat2, lon2) -> float:
    p1, p2, dl = np.deg2rad(lat1), np.deg2rad(lat2), np.deg2rad(lon2 - lon1)
    return float(np.arccos(np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl)))


def test_neighbours_are_correlated_as_the_isotropic_kernel_says(hs_draws):
    lat, lon, L = HS.latitudes, HS.longitudes, 16
    iid = np.asarray(GaussianNoise()(jax.random.key(0), jnp.zeros((NUM_DRAWS, 16, 32))))
    j = 8  # just north of the equator
    for (j1, i1), (j2, i2) in [((j, 0), (j, 1)), ((j, 5), (j + 1, 5)), ((3, 7), (3, 8))]:
        gamma = angle(lat[j1], lon[i1], lat[j2], lon[i2])
        # Cov = (1/L) Σ_{l<L} P_l(cos γ) (module docstring of filtrax.diffusion.latent_noise).
        expected = np.mean([eval_legendre(degree, np.cos(gamma)) for degree in range(L)])
        observed = np.corrcoef(hs_draws[:, j1, i1], hs_draws[:, j2, i2])[0, 1]
        assert expected > 0.3 and abs(observed - expected) < 0.06, (observed, expected)
        assert abs(np.corrcoef(iid[:, j1, i1], iid[:, j2, i2])[0, 1]) < 0.06


# --------------------------------------------------------------------------------------------
# Bad grids and names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"latitudes": np.linspace(-80, 80, 16), "longitudes": HS.longitudes},
            r"SphericalWhiteNoise.latitudes = \(-80, .* match none of dinosaur's 16-row",
        ),
        (
            {"latitudes": HS.latitudes, "longitudes": np.asarray(HS.longitudes) + 5.625},
            r"SphericalWhiteNoise.longitudes = \(5.625, .* must be regular from 0",
        ),
        (
            {"latitudes": HS.latitudes, "longitudes": np.arange(32) * 10.0},
            r"SphericalWhiteNoise.longitudes = .* expected \(0, 11.25, 22.5",
        ),
        (
            {"latitudes": HS.latitudes, "longitudes": HS.longitudes, "total_wavenumbers": 17},
            r"SphericalWhiteNoise.total_wavenumbers = 17 must be an integer in \[1, .* 16\]",
        ),
        (
            {"latitudes": HS.latitudes, "longitudes": HS.longitudes, "total_wavenumbers": 0},
            r"SphericalWhiteNoise.total_wavenumbers = 0",
        ),
    ],
)
def test_bad_grids_raise_value_errors_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SphericalWhiteNoise(**kwargs)


def test_lower_band_limit_and_bad_templates_and_names(hs_noise):
    low = SphericalWhiteNoise.from_grid(HS, total_wavenumbers=4)
    assert low.band_limit == 4 and hs_noise.band_limit == 16
    with pytest.raises(ValueError, match=r"template has shape \(16, 16\), expected"):
        hs_noise(jax.random.key(0), jnp.zeros((16, 16)))
    with pytest.raises(ValueError, match=r"unknown latent noise 'pink'; choices: gaussian, sph"):
        latent_noise_from_name("pink", HS)


# --------------------------------------------------------------------------------------------
# The gridded emulator and the experiment config
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hs_emulator():
    # Building the card's network costs ~20 s the first time in a process (eager init of the
    # SphereUNet), ~0.1 s after that; tests/test_atmosphere.py has paid it in a full run.
    from filtrax.emulators.atmosphere import bundled_emulator

    return bundled_emulator("hs_t21_16x32")


def test_emulator_default_noise_is_unchanged_and_spherical_is_an_option(hs_emulator):
    from filtrax.emulators.atmosphere import bundled_emulator, with_latent_noise

    key, template = jax.random.key(11), jnp.zeros(hs_emulator.grid.shape)  # (18, 16, 32)
    assert isinstance(hs_emulator.latent_noise, GaussianNoise)
    np.testing.assert_array_equal(
        hs_emulator.noise(key, template), jax.random.normal(key, template.shape, template.dtype)
    )
    spherical = bundled_emulator("hs_t21_16x32", noise="spherical")
    assert spherical.latent_noise == SphericalWhiteNoise.from_grid(hs_emulator.grid)
    eps = spherical.noise(key, template)
    assert eps.shape == (18, 16, 32) and eps.dtype == jnp.float32
    np.testing.assert_array_equal(eps, SphericalWhiteNoise.from_grid(HS)(key, template))
    with pytest.raises(ValueError, match="latent_noise is spherical noise on 9 latitudes"):
        with_latent_noise(hs_emulator, SphericalWhiteNoise(POLES_LAT, LON_16))


def test_heldsuarez_config_takes_the_noise(hs_emulator):
    from filtrax.experiments.config import ConfigError, load_config
    from filtrax.experiments.factory import load_atmosphere_emulator

    poster = ROOT / "configs/heldsuarez/poster16.toml"
    assert load_config(poster).model.noise == "gaussian"
    config = load_config(poster, ["model.noise=spherical"])
    assert config.model.noise == "spherical"
    emulator, _ = load_atmosphere_emulator(config)
    # The card's own grid: each card stores the latitudes of the data it was trained on, and
    # the retrained cards' (data regenerated here) differ from the shipped one's in the last
    # bit, so the shipped card's grid is not the reference here.
    assert emulator.latent_noise == SphericalWhiteNoise.from_grid(emulator.grid)
    np.testing.assert_allclose(emulator.grid.latitudes, hs_emulator.grid.latitudes, rtol=1e-12)
    with pytest.raises(ConfigError, match=r"model\.noise = 'pink' is not one of: gaussian, sph"):
        load_config(poster, ["model.noise=pink"])
