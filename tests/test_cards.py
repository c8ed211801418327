"""Model cards and sha256-checked weights (npz only, never unpickled)."""

from __future__ import annotations

import numpy as np
import pytest

from filtrax.emulators.cards import list_cards, load_card, load_weights, sha256_of


def test_bundled_cards_have_the_required_fields():
    names = [card["name"] for card in list_cards()]
    assert {"linear_gaussian", "gaussian_field"} <= set(names)
    with pytest.raises(ValueError, match="unknown emulator 'nope'; bundled: gaussian_field"):
        load_card("nope")


def test_weights_are_checked_against_their_sha256(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, w=np.arange(6.0).reshape(2, 3), b=np.ones(3))
    digest = sha256_of(path)
    weights = load_weights(path, digest)
    np.testing.assert_array_equal(weights["w"], np.arange(6.0).reshape(2, 3))
    with pytest.raises(ValueError, match=r"has sha256 .* but its card expects 0000"):
        load_weights(path, "0" * 64)
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "missing.npz", digest)


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, o=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_weights(path, sha256_of(path))
