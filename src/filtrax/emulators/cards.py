"""Model cards of the bundled emulators, and sha256-checked weight loading.

A card is a TOML file in ``filtrax/emulators/cards/``. Learned emulators name their weights
file (npz, loaded with ``allow_pickle=False``) and its sha256; :func:`load_weights` refuses
a file whose digest differs.
"""

from __future__ import annotations

import hashlib
import tomllib
from importlib import resources
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

REQUIRED_FIELDS = ("name", "description", "kind", "license", "weights", "sha256")


def _card_files() -> dict[str, Path]:
    folder = resources.files("filtrax.emulators") / "cards"
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".toml")}


def list_cards() -> list[dict]:
    """Every bundled card, sorted by name."""
    return [load_card(name) for name in sorted(_card_files())]


def load_card(name: str) -> dict:
    files = _card_files()
    if name not in files:
        raise ValueError(f"unknown emulator {name!r}; bundled: {', '.join(sorted(files))}")
    card = tomllib.loads(files[name].read_text())
    missing = [k for k in REQUIRED_FIELDS if k not in card]
    if missing:
        raise ValueError(f"card {files[name]} lacks the fields {missing}")
    return card


def trained_card(weights: str | Path) -> dict:
    """The card next to the weights of a ``filtrax train`` output (``<name>.toml``): it
    holds the architecture and the sha256 the weights are checked against."""
    weights = Path(weights)
    sidecar = weights.with_suffix(".toml")
    if not weights.exists():
        raise FileNotFoundError(f"weights file {weights} not found")
    if not sidecar.exists():
        raise FileNotFoundError(
            f"weights file {weights} has no card {sidecar} (written by 'filtrax train'); "
            f"it is needed for the architecture and the sha256"
        )
    try:
        return tomllib.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"card {sidecar} is unreadable: {error}") from None


def card_and_weights(card: dict | None, weights: str | Path | None) -> tuple[dict, Path]:
    """The card in effect and the path of its weights.

    ``weights`` (a file written by ``filtrax train``) wins over the bundled file the card
    names; with no ``card`` its own card, written next to it, is read (:func:`trained_card`).
    """
    if weights is not None:
        path = Path(weights)
        return (trained_card(path) if card is None else card), path
    if card is None:
        raise ValueError("an emulator needs a bundled card or a weights file; got neither")
    return card, Path(str(resources.files("filtrax.emulators") / "cards" / card["weights"]))


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights(path: str | Path, expected_sha256: str) -> dict[str, np.ndarray]:
    """Load an npz weights file after checking its sha256 (never unpickles anything)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} not found")
    actual = sha256_of(path)
    if actual != expected_sha256.lower():
        raise ValueError(
            f"weights file {path} has sha256 {actual}, but its card expects {expected_sha256}; "
            f"the file is corrupt or not the one the card describes"
        )
    with np.load(path, allow_pickle=False) as data:
        return {k: np.asarray(data[k]) for k in data.files}


def write_weights(path: str | Path, arrays: dict[str, np.ndarray]) -> str:
    """Write ``arrays`` to an npz file (no pickles) and return its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez(handle, allow_pickle=False, **arrays)
    return sha256_of(path)


def _leaf_names(tree) -> list[str]:
    paths = jax.tree_util.tree_flatten_with_path(eqx.filter(tree, eqx.is_array))[0]
    return [jax.tree_util.keystr(path) for path, _ in paths]


def module_arrays(module: PyTree, prefix: str = "network") -> dict[str, np.ndarray]:
    """A module's array leaves keyed by ``prefix`` + their path in the module tree."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(module, eqx.is_array))
    names = _leaf_names(module)
    return {f"{prefix}{name}": np.asarray(leaf) for name, leaf in zip(names, leaves, strict=True)}


def fill_module(template, arrays: dict[str, np.ndarray], source: str, prefix: str = "network"):
    """``template`` with every array leaf replaced by ``arrays[prefix + path]``.

    Missing names and shape mismatches are errors that name the array and ``source``.
    """
    params, static = eqx.partition(template, eqx.is_array)
    names = _leaf_names(template)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    filled = []
    for name, leaf in zip(names, leaves, strict=True):
        stored = arrays.get(f"{prefix}{name}")
        if stored is None:
            raise ValueError(f"{source}: weights lack the array '{prefix}{name}'")
        if stored.shape != leaf.shape:
            raise ValueError(
                f"{source}: array '{prefix}{name}' has shape {stored.shape}, but the card's "
                f"architecture needs {leaf.shape}"
            )
        filled.append(jnp.asarray(stored, leaf.dtype))
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, filled), static)
