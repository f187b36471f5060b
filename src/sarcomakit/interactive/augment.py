"""Strong intensity augmentation for the interactive network, so that it follows prompts rather than one contrast.

Sarcomas are imaged with T1, T2FS, PET and CT, and a tumour is bright in one and dark in another. A
network that has learnt "the tumour is the bright blob" fails on the next modality; one that has
seen the same anatomy under many random contrasts learns to read the prompts and the boundaries
instead. Each image channel of a training patch goes, independently, through:

1. rescaling to [0, 1] between its 0.5th and 99.5th percentiles (values outside are kept, so that
   the map stays monotone and undoable);
2. with probability ``p_remap``, a random monotone intensity remapping: MONAI's
   ``RandHistogramShift``, a piecewise-linear map through random control points;
3. with probability ``p_invert``, contrast inversion ``x -> 1 - x`` (a monotone decreasing map, T1
   against T2);
4. with probability ``p_gamma``, a gamma curve ``x ** g`` with ``g`` in ``gamma_range``
   (MONAI's ``RandAdjustContrast``);
5. with probability ``p_bias``, a smooth multiplicative bias field (MONAI's ``RandBiasField``,
   the MR coil inhomogeneity);
6. rescaling back to the channel's original range, then Gaussian noise of a random standard
   deviation up to ``noise_std`` times the channel's standard deviation with probability ``p_noise``.

Then, with probability ``p_channel_dropout`` and more than one channel, a random non-empty strict
subset of the channels is zeroed (a missing sequence). :func:`pick_channel` draws one channel, for
networks that take a single channel of any modality.

All randomness comes from the ``numpy.random.Generator`` passed in, so a sample replays exactly.

Example:
    >>> import numpy as np
    >>> patch = np.random.default_rng(0).normal(size=(2, 8, 16, 16)).astype(np.float32)
    >>> out = IntensityAugmentation()(patch, np.random.default_rng(1))
    >>> out.shape, out.dtype, bool(np.isfinite(out).all())
    ((2, 8, 16, 16), dtype('float32'), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from monai.transforms import RandAdjustContrast, RandBiasField, RandHistogramShift


@dataclass(frozen=True)
class IntensityAugmentation:
    """Random per-channel contrast changes (see the module docstring); call it on a ``(C, Z, Y, X)`` patch.

    Attributes:
        p_remap, p_invert, p_gamma, p_bias, p_noise: probability of each step, per channel.
        gamma_range: range of the gamma exponent.
        control_points: range of the number of control points of the monotone remapping.
        bias_coefficients: range of the bias field's polynomial coefficients (MONAI's ``coeff_range``).
        noise_std: largest noise standard deviation, relative to the channel's.
        p_channel_dropout: probability of zeroing a random strict subset of the channels.
    """

    p_remap: float = 0.5
    p_invert: float = 0.25
    p_gamma: float = 0.3
    p_bias: float = 0.3
    p_noise: float = 0.3
    gamma_range: tuple[float, float] = (0.6, 1.7)
    control_points: tuple[int, int] = (4, 10)
    bias_coefficients: tuple[float, float] = (0.0, 0.06)
    noise_std: float = 0.15
    p_channel_dropout: float = 0.2

    @classmethod
    def named(cls, strength: str) -> IntensityAugmentation | None:
        """``"strong"`` (the defaults), ``"light"`` (gamma and noise only) or ``"none"`` (None)."""
        if strength == "strong":
            return cls()
        if strength == "light":
            return cls(p_remap=0.0, p_invert=0.0, p_bias=0.0, p_channel_dropout=0.0)
        if strength == "none":
            return None
        raise ValueError(f"unknown intensity augmentation {strength!r}; choose strong, light or none")

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """An augmented float32 copy of ``image`` ``(C, Z, Y, X)``."""
        out = np.array(image, dtype=np.float32, copy=True)
        for c in range(out.shape[0]):
            out[c] = self._channel(out[c], rng)
        if out.shape[0] > 1 and rng.random() < self.p_channel_dropout:
            n_dropped = int(rng.integers(1, out.shape[0]))
            out[rng.choice(out.shape[0], size=n_dropped, replace=False)] = 0.0
        return out

    def _channel(self, channel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        low, high = np.percentile(channel, (0.5, 99.5))
        scale = float(high - low)
        if scale <= 1e-6:
            return channel
        x = (channel - low) / scale
        if rng.random() < self.p_remap:
            inside = np.clip(x, 0.0, 1.0)
            remap = RandHistogramShift(num_control_points=self.control_points, prob=1.0)
            remap.set_random_state(seed=int(rng.integers(2**31)))
            remapped = np.asarray(remap(inside[None]))[0]
            # keep the map monotone beyond [0, 1]: shift the values outside by the map's end points
            x = np.where(x < 0, x + remapped.min(), np.where(x > 1, x - 1 + remapped.max(), remapped))
        if rng.random() < self.p_invert:
            x = 1.0 - x
        if rng.random() < self.p_gamma:
            gamma = RandAdjustContrast(prob=1.0, gamma=self.gamma_range)
            gamma.set_random_state(seed=int(rng.integers(2**31)))
            x = np.asarray(gamma(x[None]))[0]
        if rng.random() < self.p_bias:
            bias = RandBiasField(degree=3, coeff_range=self.bias_coefficients, prob=1.0)
            bias.set_random_state(seed=int(rng.integers(2**31)))
            # the field multiplies, so apply it to positive values (x + 1 > 0 inside the window)
            x = np.asarray(bias((x + 1.0)[None]))[0] - 1.0
        out = (x * scale + low).astype(np.float32)
        if rng.random() < self.p_noise:
            std = float(rng.uniform(0.0, self.noise_std)) * float(channel.std())
            out += rng.normal(0.0, std, size=out.shape).astype(np.float32)
        return out


def pick_channel(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One channel of ``image`` ``(C, Z, Y, X)`` drawn uniformly among the non-constant ones, as ``(1, Z, Y, X)``."""
    candidates = [c for c in range(image.shape[0]) if np.ptp(image[c]) > 0] or list(range(image.shape[0]))
    return np.asarray(image[[candidates[int(rng.integers(len(candidates)))]]], dtype=np.float32)
