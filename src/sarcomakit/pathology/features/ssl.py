"""Self-supervised pretraining of a patch encoder on the user's own tiles (SimCLR with stain augmentation).

Two random views of each tile are made by geometric augmentation (random resized crop, flips and 90-degree
rotations, composed into one affine warp per tile), colour jitter (brightness, contrast, saturation, hue)
and optionally H&E stain augmentation; the encoder plus a small projection head is trained so that the two
views of a tile are closer to each other than to any other view in the batch (NT-Xent loss, Chen et al.
2020). The augmentations are written with torch tensor ops because torchvision is kept out of the runtime.
The saved checkpoint is loadable by ``build_encoder(name, weights=path)``. Training runs on the project's
:class:`~sarcomakit.training.trainer.Trainer` (the objective holds the projection head and the view augmentation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from sarcomakit.core.errors import UserInputError
from sarcomakit.pathology.features.encoders import PatchEncoder, save_encoder_checkpoint
from sarcomakit.tasks.base import LossOutput, Objective
from sarcomakit.training.trainer import Callback, Trainer


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Normalised temperature-scaled cross-entropy (SimCLR) of two views (B, P) of the same B tiles.

    With ``z`` the 2B L2-normalised projections and ``s_ij = z_i . z_j / t``, the loss of view ``i`` is
    ``-log(exp(s_i,pos(i)) / sum_{j != i} exp(s_ij))``, averaged over the 2B views.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


@dataclass
class ViewAugment:
    """Random view of a batch of tiles (B, 3, H, W) in [0, 1], resized to ``out_size``.

    Attributes:
        out_size: side of the output views.
        crop_scale: range of the crop's area relative to the tile.
        brightness, contrast, saturation: maximal relative jitter of each.
        hue: maximal hue rotation in turns (fraction of 360 degrees), applied in YIQ space.
        stain: optional per-tile stain augmentation, ``fn(tile (3, H, W)) -> tile`` (e.g. StainAugment).
    """

    out_size: int
    crop_scale: tuple[float, float] = (0.35, 1.0)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.04
    stain: Callable[[torch.Tensor], torch.Tensor] | None = None

    def geometric(self, tiles: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Crop (area fraction in ``crop_scale``, random position), flip and rotate by k * 90 degrees."""
        b = tiles.shape[0]
        scale = torch.empty(b).uniform_(*self.crop_scale, generator=generator).sqrt()
        shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (1 - scale)[:, None]
        angle = torch.randint(0, 4, (b,), generator=generator).float() * (math.pi / 2)
        flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos * scale * flip, -sin * scale
        theta[:, 1, 0], theta[:, 1, 1] = sin * scale * flip, cos * scale
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta.to(tiles), [b, 3, self.out_size, self.out_size], align_corners=False)
        return F.grid_sample(tiles, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def colour(self, tiles: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Brightness, contrast, saturation and hue jitter (each factor drawn per tile)."""
        b = tiles.shape[0]

        def factor(amount: float) -> torch.Tensor:
            return (1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * amount).to(tiles)

        x = tiles * factor(self.brightness)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor(self.contrast) + mean
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * factor(self.saturation) + gray
        x = self._rotate_hue(x, (torch.rand(b, generator=generator) * 2 - 1) * self.hue * 2 * math.pi)
        return x.clamp(0, 1)

    @staticmethod
    def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        to_rgb = torch.linalg.inv(to_yiq)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.zeros(angle.shape[0], 3, 3)
        rotation[:, 0, 0] = 1
        rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
        matrix = (to_rgb @ rotation @ to_yiq).to(x)
        return torch.einsum("bij,bjhw->bihw", matrix, x)

    def __call__(self, tiles: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.stain is not None:
            tiles = torch.stack([self.stain(t) for t in tiles])
        return self.colour(self.geometric(tiles.float(), generator), generator)


class ProjectionHead(nn.Module):
    """SimCLR projection MLP: Linear -> ReLU -> Linear."""

    def __init__(self, in_dim: int, out_dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SimCLRObjective(Objective):
    """NT-Xent of two augmented views of each tile of a batch, through the encoder and the projection head (whose
    parameters are the objective's: trained with the encoder, dropped afterwards)."""

    def __init__(self, encoder: PatchEncoder, head: ProjectionHead, augment: ViewAugment, temperature: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.normalize = encoder.normalize
        self.head = head
        self.augment = augment
        self.temperature = temperature
        self.generator = generator

    def forward(self, model: nn.Module, batch: Any, device: torch.device) -> LossOutput:
        tiles = batch[0]
        views = [self.normalize(self.augment(tiles, self.generator)).to(device) for _ in range(2)]
        return LossOutput(nt_xent_loss(self.head(model(views[0])), self.head(model(views[1])), self.temperature))


class _StepLosses(Callback):
    """Keeps every step's loss and reports it to an optional ``fn(step, loss)`` (progress display)."""

    def __init__(self, on_step: Callable[[int, float], None] | None) -> None:
        self.on_step = on_step
        self.losses: list[float] = []

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        self.losses.append(loss)
        if self.on_step is not None:
            self.on_step(len(self.losses), loss)


def collect_tiles(slides: Sequence[tuple[str | Path, Any]], per_slide: int = 64, seed: int = 0,
                  mpp: float | None = None) -> torch.Tensor:
    """A random sample of at most ``per_slide`` tiles (3, H, W) from each (slide path, TileGrid) pair."""
    from sarcomakit.pathology.wsi.tiles import TileDataset

    rng = np.random.default_rng(seed)
    tiles: list[torch.Tensor] = []
    for slide_path, grid in slides:
        dataset = TileDataset(slide_path, grid, mpp=mpp)
        chosen = rng.choice(len(dataset), size=min(per_slide, len(dataset)), replace=False)
        tiles.extend(dataset[int(i)][0] for i in chosen)
    if not tiles:
        raise UserInputError("no tiles to pretrain on.", fix="tile the slides first (`sarcomakit wsi tile`).")
    return torch.stack(tiles).float()


def _as_tensor(tile_source: torch.Tensor | Dataset) -> torch.Tensor:
    if isinstance(tile_source, torch.Tensor):
        return tile_source.float()
    items = [tile_source[i] for i in range(len(tile_source))]  # type: ignore[arg-type]
    return torch.stack([item[0] if isinstance(item, tuple | list) else item for item in items]).float()


@dataclass
class PretrainResult:
    """The trained encoder, the loss of each step, and the checkpoint written (if any)."""

    encoder: PatchEncoder
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None


def pretrain_encoder(tile_source: torch.Tensor | Dataset, encoder: PatchEncoder, epochs: int = 10,
                     batch_size: int = 64, lr: float = 1e-3, temperature: float = 0.2,
                     projection_dim: int = 64, stain: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     augment: ViewAugment | None = None, device: str = "cpu", seed: int = 0,
                     out_path: str | Path | None = None, encoder_options: dict[str, Any] | None = None,
                     on_step: Callable[[int, float], None] | None = None) -> PretrainResult:
    """SimCLR pretraining of ``encoder`` on tiles.

    Args:
        tile_source: tiles (N, 3, H, W) in [0, 1], or a dataset of tiles (or (tile, index) pairs), e.g. from
            :func:`collect_tiles`.
        encoder: the encoder to train (in place).
        epochs: passes over the tiles.
        batch_size: tiles per step (2 x batch_size views); at least 2.
        lr: AdamW learning rate (cosine decay over the epochs).
        temperature: NT-Xent temperature.
        projection_dim: width of the projection head's output.
        stain: optional per-tile stain augmentation, e.g. ``StainAugment``.
        augment: custom view augmentation (default: :class:`ViewAugment` at the encoder's input size).
        device: torch device.
        seed: random seed (views and order).
        out_path: where to save the checkpoint (loadable by ``build_encoder(encoder.name, weights=out_path)``).
        encoder_options: builder options saved with the weights (e.g. ``{"embed_dim": 64}``).
        on_step: callback ``fn(step, loss)`` (progress display).

    Returns:
        The :class:`PretrainResult`.
    """
    tiles = _as_tensor(tile_source)
    if tiles.shape[0] < 2:
        raise UserInputError(f"SSL pretraining needs at least 2 tiles, got {tiles.shape[0]}.")
    batch_size = max(2, min(batch_size, tiles.shape[0]))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # a seeded head without touching the caller's random state
        torch.manual_seed(seed)
        head = ProjectionHead(encoder.embed_dim, projection_dim).to(device)
    objective = SimCLRObjective(encoder, head, augment or ViewAugment(encoder.input_size, stain=stain), temperature,
                                generator)
    module = encoder.module.to(device)
    optimizer = torch.optim.AdamW([*module.parameters(), *objective.parameters()], lr=lr, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tiles), batch_size=batch_size,
                                         sampler=torch.utils.data.RandomSampler(tiles, generator=generator),
                                         drop_last=True)
    record = _StepLosses(on_step)
    trainer = Trainer(module, objective, optimizer, loader, device=torch.device(device), epochs=epochs,
                      scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs)),
                      callbacks=[record])
    trainer.fit()
    losses = record.losses
    module.eval()
    module.to("cpu")
    checkpoint = None
    if out_path is not None:
        checkpoint = save_encoder_checkpoint(encoder, out_path, encoder_options,
                                             extra={"ssl": "simclr", "losses": losses, "epochs": epochs})
    return PretrainResult(encoder, losses, checkpoint)
