"""Learnable intensity preprocessing: CT/PET windows, a monotone Nyúl–Udupa standardisation, a normaliser CNN.

MONAI and TorchIO have these steps only as fixed transforms (``ScaleIntensityRange``,
``HistogramStandardization``) without learnable parameters, so they are written here in torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from sarcomakit.models.preprocessing_layers.base import InputLayer

_EPS = 1e-6
DEFAULT_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


def smooth_clip(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, sharpness: float = 20.0) -> torch.Tensor:
    """``clip(x, low, high)`` with rounded corners, differentiable in ``x``, ``low`` and ``high``:
    ``low + softplus(b (x - low)) / b - softplus(b (x - high)) / b`` with ``b = sharpness / (high - low)``;
    it departs from the hard clip by at most ``ln 2 / b`` (3.5% of the width at the default sharpness)."""
    beta = sharpness / (high - low).clamp_min(_EPS)
    return low + F.softplus(beta * (x - low)) / beta - F.softplus(beta * (x - high)) / beta


class LearnableWindow(InputLayer):
    """Learnable intensity windows for CT and PET (as WSO, Lee et al. 2017), several per input channel.

    Output channel ``j`` reads input channel ``c_j`` and computes
    ``y_j = (smooth_clip(x_c, L_j - W_j / 2, L_j + W_j / 2) - m_j) / s_j`` with :func:`smooth_clip`,
    learnable level ``L_j`` and log-width ``log W_j``, and fixed output centring ``m_j`` and scale ``s_j``.

    Initialisation: window ``k = 0`` of a channel is the plan's CT rule (``low``/``high`` the dataset
    foreground 0.5/99.5 percentiles, ``m``/``s`` its foreground mean and standard deviation), so the layer
    starts as nnU-Net's clipping and z-scoring; window ``k > 0`` is centred on the foreground mean with
    width ``(high - low) / 2**k`` (narrower soft-tissue windows). What it learns: where each window lies
    and how wide it is. Channels not listed pass through; a channel with ``n`` windows becomes ``n``
    adjacent channels.

    Args:
        in_channels: input channels.
        channels: windowed channels.
        low, high, mean, std: the plan's foreground statistics, one per windowed channel.
        windows: windows per windowed channel.
        sharpness: of the smooth clip.
    """

    centre: torch.Tensor
    scale: torch.Tensor

    def __init__(self, in_channels: int, channels: Sequence[int], low: Sequence[float], high: Sequence[float],
                 mean: Sequence[float], std: Sequence[float], windows: int = 1, sharpness: float = 20.0) -> None:
        super().__init__(in_channels, channels)
        if not len(low) == len(high) == len(mean) == len(std) == len(self.channels):
            raise ValueError("low, high, mean and std need one value per windowed channel")
        if windows < 1:
            raise ValueError("windows must be at least 1")
        self.windows = int(windows)
        self.sharpness = float(sharpness)
        levels, log_widths, centres, scales = [], [], [], []
        for lo, hi, m, s in zip(low, high, mean, std, strict=True):
            width = max(float(hi) - float(lo), _EPS)
            for k in range(self.windows):
                w = width / 2**k
                levels.append((float(lo) + float(hi)) / 2 if k == 0 else float(m))
                log_widths.append(math.log(w))
                centres.append(float(m))
                scales.append(max(float(s), _EPS) * (1.0 if k == 0 else 2.0**-k))
        self.level = nn.Parameter(torch.tensor(levels))
        self.log_width = nn.Parameter(torch.tensor(log_widths))
        self.register_buffer("centre", torch.tensor(centres))
        self.register_buffer("scale", torch.tensor(scales))

    @property
    def out_channels(self) -> int:
        return self.in_channels + (self.windows - 1) * len(self.channels)

    def window_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current windows' lower and upper bounds (one per output window)."""
        half = torch.exp(self.log_width) / 2
        return self.level - half, self.level + half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.window_bounds()
        parts: list[torch.Tensor] = []
        j = 0
        for c in range(self.in_channels):
            if c not in self.channels:
                parts.append(x[:, c:c + 1])
                continue
            for _ in range(self.windows):
                clipped = smooth_clip(x[:, c:c + 1], low[j].to(x.dtype), high[j].to(x.dtype), self.sharpness)
                parts.append((clipped - self.centre[j].to(x.dtype)) / self.scale[j].to(x.dtype))
                j += 1
        return torch.cat(parts, dim=1)


def standard_normal_landmarks(percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> list[float]:
    """The landmarks a z-scored Gaussian image has at ``percentiles``: the default standard scale."""
    return [float(v) for v in norm.ppf(np.asarray(percentiles, dtype=float) / 100.0)]


def fit_standard_landmarks(images: Sequence[np.ndarray],
                           percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> list[float]:
    """Nyúl–Udupa's training phase on z-scored images: the mean, over images, of each image's landmarks
    after ``(x - mean) / std``. Initialised with these, :class:`MonotoneIntensity` reproduces the plan's
    per-image z-score on images whose histogram has the usual shape."""
    rows = []
    for image in images:
        values = np.asarray(image, dtype=np.float64).ravel()
        z = (values - values.mean()) / max(values.std(), _EPS)
        rows.append(np.percentile(z, list(percentiles)))
    landmarks = np.maximum.accumulate(np.mean(rows, axis=0))
    return [float(v) for v in landmarks + np.arange(len(landmarks)) * 1e-4]  # strictly increasing


def _inverse_softplus(values: torch.Tensor) -> torch.Tensor:
    return values + torch.log(-torch.expm1(-values))


class MonotoneIntensity(InputLayer):
    """Learnable Nyúl–Udupa intensity standardisation: a monotone piecewise-linear map per channel.

    For each image and channel, the input landmarks ``q_1 < ... < q_L`` are the image's own intensity
    percentiles (``percentiles``); the output landmarks ``s_1 < ... < s_L`` are learnt and shared by
    every image. Between landmarks the map is linear,
    ``y = s_k + (x - q_k) (s_{k+1} - s_k) / (q_{k+1} - q_k)``, and beyond the ends it continues the end
    segments. Monotonicity holds for any parameter value because ``s_1 = b`` and
    ``s_{k+1} = s_k + softplus(t_k)`` (softplus-cumsum), so training cannot fold the intensity scale.

    Initialisation: ``s`` from ``landmarks`` (default :func:`standard_normal_landmarks`; pass
    :func:`fit_standard_landmarks` of training images to start at the plan's z-score). What it learns:
    the standard intensity scale every image is mapped onto, i.e. which intensity ranges to stretch.
    The percentiles are those of the network's input: of the patch during training and of each
    sliding-window patch at inference, which approach the image's for patches covering most of it.

    Args:
        in_channels: input channels.
        channels: standardised channels (default all).
        percentiles: landmark percentiles (increasing, in (0, 100)).
        landmarks: initial output landmarks, one list for every channel or one per channel.
    """

    probabilities: torch.Tensor

    def __init__(self, in_channels: int, channels: Sequence[int] | None = None,
                 percentiles: Sequence[float] = DEFAULT_PERCENTILES,
                 landmarks: Sequence[float] | Sequence[Sequence[float]] | None = None) -> None:
        super().__init__(in_channels, channels)
        levels = [float(p) for p in percentiles]
        if len(levels) < 2 or any(b <= a for a, b in zip(levels, levels[1:], strict=False)) or \
                not 0 < levels[0] < levels[-1] < 100:
            raise ValueError("percentiles must increase within (0, 100), at least two")
        self.register_buffer("probabilities", torch.tensor(levels) / 100.0)
        init = standard_normal_landmarks(levels) if landmarks is None else landmarks
        rows = [list(init)] * len(self.channels) if not isinstance(init[0], Sequence) else [list(r) for r in init]  # type: ignore[arg-type]
        target = torch.tensor(rows, dtype=torch.float32)
        if target.shape != (len(self.channels), len(levels)) or bool((target.diff(dim=1) <= 0).any()):
            raise ValueError("landmarks must increase, one per percentile")
        self.first = nn.Parameter(target[:, 0].clone())
        self.steps = nn.Parameter(_inverse_softplus(target.diff(dim=1)))

    def output_landmarks(self) -> torch.Tensor:
        """The current output landmarks (channels, L), strictly increasing along L."""
        return torch.cat([self.first[:, None], self.first[:, None] + torch.cumsum(F.softplus(self.steps), 1)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        landmarks = self.output_landmarks().to(x.dtype)
        probabilities = self.probabilities.to(x.dtype)
        for i, c in enumerate(self.channels):
            values = x[:, c].reshape(x.shape[0], -1)
            q = torch.quantile(values, probabilities, dim=1).T.contiguous()  # (B, L)
            q = q + torch.arange(q.shape[1], dtype=x.dtype, device=x.device) * _EPS  # ties: keep increasing
            index = torch.searchsorted(q, values.contiguous()).clamp(1, q.shape[1] - 1)
            q0, q1 = q.gather(1, index - 1), q.gather(1, index)
            s = landmarks[i].expand(x.shape[0], -1)
            s0, s1 = s.gather(1, index - 1), s.gather(1, index)
            mapped = s0 + (values - q0) * (s1 - s0) / (q1 - q0).clamp_min(_EPS)
            out[:, c] = mapped.reshape(x[:, c].shape)
        return out


class NormaliserCNN(InputLayer):
    """A small residual normaliser network (Karani et al. 2018), identity-initialised.

    ``u = (x - mean(x)) / std(x)`` per image and channel (the plan's z-score, parameter-free), then
    ``y = u + f(u)`` with ``f`` three 3x3x3 convolutions (``hidden`` channels, leaky ReLU in between)
    whose last layer starts at zero, so the layer starts exactly as the plan's z-score. What it learns:
    a local, contrast-dependent intensity correction (bias, contrast, noise) trained with the task.

    Args:
        in_channels: input channels.
        channels: normalised channels (default all); ``f`` sees all of them.
        hidden: channels of the hidden layers.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] | None = None, hidden: int = 8) -> None:
        super().__init__(in_channels, channels)
        self.correction = nn.Sequential(
            nn.Conv3d(in_channels, hidden, 3, padding=1), nn.LeakyReLU(0.01),
            nn.Conv3d(hidden, hidden, 3, padding=1), nn.LeakyReLU(0.01),
            nn.Conv3d(hidden, len(self.channels), 3, padding=1))
        last = self.correction[-1]
        assert isinstance(last, nn.Conv3d)
        nn.init.zeros_(last.weight)
        assert last.bias is not None
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        u = x.clone()
        chosen = x[:, self.channels]
        spread = chosen.std(dims, keepdim=True, correction=0).clamp_min(_EPS)
        u[:, self.channels] = (chosen - chosen.mean(dims, keepdim=True)) / spread
        out = u.clone()
        out[:, self.channels] = u[:, self.channels] + self.correction(u)
        return out
