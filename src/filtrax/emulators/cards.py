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

import numpy as np

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
