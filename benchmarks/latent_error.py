r"""The conditional spread of the normalised 12-hour residual, per channel: EDM's σ_data.

GenCast trains on :math:`z = (x^{k+1} - x^k)/s_\Delta`, whose *marginal* standard deviation is 1
by construction, and takes :math:`\sigma_\text{data} = 1`. What the denoiser has to model
around the conditional mean :math:`E[z \mid x^{k-1}, x^k]` is the *conditional* spread, which
is smaller. A network that has not learned to use its noisy input returns
:math:`c_\text{skip} x + (1 - c_\text{skip})\mu`, the exact denoiser of
:math:`\mathcal N(\mu, \sigma_\text{data}^2)`, so its members carry noise of standard
deviation :math:`\sigma_\text{data}` around the mean (method spec §3.7).

This script estimates the conditional spread per channel as the cos-latitude-weighted RMS
error of an emulator's one-call estimate of the conditional mean (one denoiser call at
``--sigma`` on pure noise, the estimate the FA-APF's weights use) over ``--states`` states of
a store, and prints it as a ``network.sigma_data`` line for a training config.

    python benchmarks/latent_error.py                                  # shipped emulator
    python benchmarks/latent_error.py --weights runs/train/hs/hs.npz --store runs/data/hs_train.zarr
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from filtrax.emulators.atmosphere import bundled_emulator, load_emulator
from filtrax.io.heldsuarez_store import stack_channels
from filtrax.training.atmosphere import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emulator", default="hs_t21_16x32", help="bundled card name")
    parser.add_argument("--weights", default=None, help="weights of 'filtrax train' instead")
    parser.add_argument("--store", default="runs/data/hs_train.zarr")
    parser.add_argument("--states", type=int, default=200)
    parser.add_argument("--every", type=int, default=14, help="states between samples")
    parser.add_argument("--sigma", type=float, default=80.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.states < 1 or args.every < 1 or args.sigma <= 0:
        parser.error("need --states >= 1, --every >= 1 and --sigma > 0")
    emulator = (
        load_emulator(None, args.weights) if args.weights else bundled_emulator(args.emulator)
    )
    data = stack_channels(open_store(args.store).load())
    index = np.arange(1, data.shape[0] - 1, args.every)[: args.states]
    states = np.stack([data[index - 1], data[index]], axis=1).astype(np.float32)
    diff_std = np.asarray(emulator.diff_std)[:, None, None]
    z_true = (data[index + 1] - data[index]) / diff_std
    sigma = jnp.asarray(args.sigma, jnp.float32)

    @jax.jit
    def one_call(key, state):
        template = emulator.latent_template(state)
        noise = sigma * emulator.noise(key, template)
        return emulator.denoiser(noise, sigma, emulator.condition(state))

    keys = jax.random.split(jax.random.key(args.seed), len(index))
    z_mean = np.stack(
        [np.asarray(one_call(k, jnp.asarray(s))) for k, s in zip(keys, states, strict=True)]
    )
    area = emulator.grid.area_weights()
    error = np.sqrt((((z_mean - z_true) ** 2) * area).mean(axis=(0, 2, 3)))
    marginal = np.sqrt(((z_true**2) * area).mean(axis=(0, 2, 3)))
    print(f"{len(index)} states of {args.store}, one call at sigma = {args.sigma:g}")
    print(f"{'channel':<36}{'conditional':>12}{'marginal':>10}")
    for channel, e, m in zip(emulator.grid.channels, error, marginal, strict=True):
        print(f"{channel.label():<36}{e:>12.3f}{m:>10.3f}")
    print("sigma_data = [" + ", ".join(f"{e:.2f}" for e in error) + "]")


if __name__ == "__main__":
    main()
