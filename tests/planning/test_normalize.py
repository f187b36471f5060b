"""Normalisation schemes on arrays with known values."""

from __future__ import annotations

import numpy as np
import pytest

from sarcomakit.planning.normalize import ChannelNormalization, nonzero_mask, normalize, normalize_channel


def test_ct_clips_then_uses_dataset_statistics():
    image = np.array([-2000.0, -100.0, 0.0, 50.0, 400.0, 3000.0], dtype=np.float32).reshape(1, 1, 6)
    spec = ChannelNormalization(channel="CT", scheme="ct", clip_low=-100.0, clip_high=400.0, mean=50.0, std=25.0)
    out = normalize_channel(image, spec)
    expected = (np.clip(image, -100, 400) - 50.0) / 25.0
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32
    assert out.min() == pytest.approx(-6.0) and out.max() == pytest.approx(14.0)


def test_ct_scheme_requires_statistics():
    with pytest.raises(ValueError, match="needs clip_low"):
        ChannelNormalization(channel="CT", scheme="ct")


def test_zscore_whole_image():
    rng = np.random.default_rng(0)
    image = (rng.normal(50, 10, (8, 9, 10))).astype(np.float32)
    out = normalize_channel(image, ChannelNormalization(channel="T1", scheme="zscore"))
    assert out.mean() == pytest.approx(0.0, abs=1e-5) and out.std() == pytest.approx(1.0, abs=1e-4)


def test_zscore_within_nonzero_mask_leaves_outside_at_zero():
    image = np.zeros((6, 10, 10), dtype=np.float32)
    image[1:5, 2:8, 2:8] = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6) + 10
    mask = nonzero_mask(image[None])
    spec = ChannelNormalization(channel="T1", scheme="zscore", use_nonzero_mask=True)
    out = normalize_channel(image, spec, mask)
    inside = image[mask]
    np.testing.assert_allclose(out[mask], (inside - inside.mean()) / inside.std(), rtol=1e-5, atol=1e-6)
    assert np.all(out[~mask] == 0)
    unmasked = normalize_channel(image, ChannelNormalization(channel="T1", scheme="zscore"))
    assert unmasked[~mask].min() < 0  # without the mask the background is shifted too


def test_nonzero_mask_fills_enclosed_holes_and_joins_channels():
    a = np.zeros((5, 9, 9), dtype=np.float32)
    a[1:4, 2:7, 2:7] = 1.0
    a[2, 4, 4] = 0.0  # a hole inside the body
    b = np.zeros_like(a)
    b[0, 0, 0] = 5.0  # nonzero only in the second channel
    mask = nonzero_mask(np.stack([a, b]))
    assert mask[2, 4, 4] and mask[0, 0, 0] and not mask[4, 8, 8]


def test_none_scheme_only_casts_and_normalize_checks_channel_count():
    data = np.arange(24, dtype=np.int16).reshape(1, 2, 3, 4)
    out = normalize(data, [ChannelNormalization(channel="X", scheme="none")])
    assert out.dtype == np.float32 and np.array_equal(out, data)
    with pytest.raises(ValueError):
        normalize(data, [])
