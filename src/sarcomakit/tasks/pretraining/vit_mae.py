"""Token-masking pretraining of the transformers of UNETR (masked autoencoder ``vit_mae``, SimMIM) and SwinUNETR
(SimMIM).

The patch is cut into 16³-voxel tokens (SwinUNETR: mask blocks) and a random fraction of them is masked; the
loss is computed on the masked tokens' voxels only. Targets are the preprocessed intensities (after the plan's
normalisation).

- ``vit_mae`` (He et al. 2022), with MONAI's ``MaskedAutoEncoderViT``: 75% of the tokens are dropped before
  the encoder, which sees only the visible ones; a light transformer decoder predicts the dropped ones;
  mean squared error.
- ``simmim`` (Xie et al. 2022, :class:`~sarcomakit.models.simmim.SimMIMViT`): 60% of the tokens are replaced by
  a learnt mask token, the encoder sees all of them, a linear layer predicts the voxels; mean absolute error.
- ``simmim`` with ``--network swinunetr`` (:class:`~sarcomakit.models.swin_simmim.SimMIMSwin`): the same on
  SwinUNETR's Swin transformer, with 60% of 16³-voxel blocks of its 2³-voxel patch embeddings masked and a
  transposed-convolution linear head; its ``swinViT.*`` tensors load into SwinUNETR unchanged (its relative
  position biases do not depend on the patch, so fine-tuning may use another patch).

The UNETR encoders have the shape of the ``unetr`` network's ViT (MONAI's UNETR always has 12 layers; width, MLP size
and heads come from ``network_options`` as for ``unetr``), so that ``sarcomakit train --network unetr --init RUN``
loads every encoder tensor (:mod:`sarcomakit.models.pretrained` renames the MAE's ``patch_embedding``,
``blocks`` and ``norm`` into UNETR's ``vit``; SimMIM's are already ``vit.*``). The patch must be the one
fine-tuning will use (UNETR): the position embeddings have one entry per token of it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.models.simmim import patchify
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.base import CaseOutput, LossOutput, Objective
from sarcomakit.tasks.pretraining.reconstruction import PretrainingTask
from sarcomakit.tasks.pretraining.sampling import MaskedPatchDataset, crop, random_start

if TYPE_CHECKING:
    from sarcomakit.data.manifest import Manifest

#: token edge in voxels (UNETR's ViT-B/16)
TOKEN = 16
#: MONAI's UNETR builds its ViT with this many transformer layers
UNETR_LAYERS = 12
#: keys of the MAE's encoder, which are UNETR's ``vit.`` tensors
ENCODER_PREFIXES = ("patch_embedding.", "blocks.", "norm.")


def masked_token_error(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                       power: int = 2) -> torch.Tensor:
    """Mean squared (``power`` 2) or absolute (1) error over the voxels of the masked tokens (``mask`` (B, N),
    1 = masked)."""
    per_token = ((prediction.float() - target.float()).abs() ** power).mean(-1)
    weight = mask.float()
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)


def masked_token_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`masked_token_error` with squared errors."""
    return masked_token_error(prediction, target, mask, power=2)


class TokenMaskingObjective(Objective):
    """The model masks tokens itself and returns ``(prediction, mask)``; the error is taken on masked tokens
    (``token``: the edge in voxels of the cubes the model masks, in :func:`patchify` order)."""

    def __init__(self, power: int = 2, token: int = TOKEN) -> None:
        super().__init__()
        self.power = power
        self.token = token

    def forward(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> LossOutput:
        image = batch["image"].to(device, non_blocking=True)
        prediction, mask = model(image)
        return LossOutput(masked_token_error(prediction, patchify(image, self.token), mask, self.power))


def _whole_patch(n_channels: int, patch_size: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """No voxel mask: the model masks tokens itself."""
    return np.zeros((n_channels, *[int(p) for p in patch_size]), dtype=bool), -1


class TokenMaskingTask(PretrainingTask):
    """Shared parts of the token-masking tasks: UNETR-shaped encoder options, patches, validation, prediction."""

    case_columns: ClassVar[tuple[str, ...]] = ("case_id", "masked_error")
    #: 2: mean squared error, 1: mean absolute error
    power: ClassVar[int] = 2

    def __init__(self, manifest: Manifest | None = None, *, mask_ratio: float, val_patches: int) -> None:
        super().__init__(manifest)
        if not 0.0 < mask_ratio < 1.0:
            raise UserInputError(f"mask_ratio {mask_ratio} is not between 0 and 1.",
                                 fix="use e.g. --task-option mask_ratio=0.6.")
        if val_patches < 1:
            raise UserInputError("val_patches must be at least 1.", fix="use --task-option val_patches=2.")
        self.mask_ratio = float(mask_ratio)
        self.val_patches = int(val_patches)

    def vit_options(self, plan: Plan, config: TrainConfig) -> tuple[list[int], dict[str, int]]:
        """The patch and UNETR's ViT options (``hidden_size``, ``mlp_dim``, ``num_heads``), checked."""
        if config.network != "unetr":
            raise UserInputError(f"{self.name} pretrains UNETR's vision transformer, not a {config.network}.",
                                 fix="use --network unetr (mae and crmae pretrain the other networks).")
        patch = [int(p) for p in (config.patch_size or plan.patch_size)]
        if any(p % TOKEN for p in patch):
            raise UserInputError(f"the patch {patch} is not a multiple of the {TOKEN}-voxel tokens.",
                                 fix=f"set patch_size to multiples of {TOKEN} (the one fine-tuning will use).")
        options = {k: v for k, v in config.network_options.items() if k != "feature_size"}
        unknown = sorted(set(options) - {"hidden_size", "mlp_dim", "num_heads"})
        if unknown:
            raise UserInputError(f"unetr has no option {', '.join(unknown)}.",
                                 fix="use hidden_size, mlp_dim, num_heads (and feature_size, unused here).")
        vit = {"hidden_size": int(options.get("hidden_size", 768)), "mlp_dim": int(options.get("mlp_dim", 3072)),
               "num_heads": int(options.get("num_heads", 12))}
        return patch, vit

    def training_data(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                      length: int) -> torch.utils.data.Dataset:
        return MaskedPatchDataset(cases, config.patch_size or plan.patch_size, length, _whole_patch,
                                  flips=config.augmentation != "none", seed=config.seed)

    def token(self, config: TrainConfig) -> int:
        """Edge in voxels of the cubes the model masks (the ViT's tokens)."""
        return TOKEN

    def objective(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig) -> Objective:
        return TokenMaskingObjective(self.power, self.token(config))

    @torch.no_grad()
    def case_error(self, model: nn.Module, case: PreprocessedCase, plan: Plan, config: TrainConfig,
                   device: torch.device) -> float:
        """Masked-token error on fixed patches of the case with fixed token masks (the same every epoch)."""
        patch = config.patch_size or plan.patch_size
        key = zlib.crc32(case.case_id.encode())
        rng = np.random.default_rng((config.seed, key, 1))
        images = np.stack([crop(case.data, random_start(case.data.shape[1:], patch, rng), patch)
                           for _ in range(self.val_patches)])
        model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed + key)
            image = torch.from_numpy(images).to(device)
            prediction, mask = model(image)
        return float(masked_token_error(prediction, patchify(image, self.token(config)), mask, self.power))

    def validate(self, model: nn.Module, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                 device: torch.device) -> dict[str, float]:
        errors = [self.case_error(model, case, plan, config, device) for case in cases]
        error = float(np.mean(errors)) if errors else float("nan")
        return {"val_masked_error": error, "val_score": -error}

    def infer(self, model: nn.Module, case: PreprocessedCase, plan: Plan, config: TrainConfig,
              device: torch.device, *, overlap: float, mirror_axes: Sequence[int] = ()) -> CaseOutput:
        """No segmentation: the case's masked-token reconstruction error."""
        return CaseOutput(probabilities=None,
                          values={"masked_error": self.case_error(model, case, plan, config, device)})


class ViTMaskedAutoencoderTask(TokenMaskingTask):
    """Masked autoencoder of UNETR's vision transformer (MONAI MaskedAutoEncoderViT; MSE on masked tokens).

    Args:
        mask_ratio: fraction of the 16³ tokens dropped.
        decoder_hidden_size: width of the light decoder (a multiple of 6).
        decoder_layers: transformer layers of the decoder.
        val_patches: fixed patches per validation case.
    """

    name = "vit_mae"

    def __init__(self, manifest: Manifest | None = None, *, mask_ratio: float = 0.75, decoder_hidden_size: int = 384,
                 decoder_layers: int = 4, val_patches: int = 2) -> None:
        super().__init__(manifest, mask_ratio=mask_ratio, val_patches=val_patches)
        if decoder_hidden_size < 6 or decoder_hidden_size % 6 or decoder_layers < 1:
            raise UserInputError("decoder_hidden_size must be a positive multiple of 6 (3D sine-cosine position "
                                 "embeddings) and decoder_layers at least 1.",
                                 fix="use e.g. --task-option decoder_hidden_size=384.")
        self.decoder_hidden_size = int(decoder_hidden_size)
        self.decoder_layers = int(decoder_layers)

    def build_model(self, plan: Plan, config: TrainConfig) -> nn.Module:
        from monai.networks.nets import MaskedAutoEncoderViT

        patch, vit = self.vit_options(plan, config)
        if vit["hidden_size"] % 6:
            raise UserInputError(f"hidden_size {vit['hidden_size']} is not a multiple of 6 (3D sine-cosine "
                                 "position embeddings).", fix="use e.g. hidden_size 768 in network_options.")
        decoder_heads = math.gcd(self.decoder_hidden_size, vit["num_heads"]) or 1
        return MaskedAutoEncoderViT(in_channels=len(plan.channels), img_size=patch, patch_size=TOKEN,
                                    num_layers=UNETR_LAYERS, masking_ratio=self.mask_ratio,
                                    decoder_hidden_size=self.decoder_hidden_size,
                                    decoder_mlp_dim=4 * self.decoder_hidden_size,
                                    decoder_num_layers=self.decoder_layers, decoder_num_heads=decoder_heads,
                                    hidden_size=vit["hidden_size"], mlp_dim=vit["mlp_dim"], num_heads=vit["num_heads"])


class SimMIMTask(TokenMaskingTask):
    """SimMIM: a learnt mask token, a light linear decoder, L1 on the masked voxels, on the network's transformer.

    With ``--network unetr``, UNETR's ViT (:class:`~sarcomakit.models.simmim.SimMIMViT`): its 16³ tokens are masked.
    With ``--network swinunetr``, SwinUNETR's Swin transformer (:class:`~sarcomakit.models.swin_simmim.SimMIMSwin`):
    ``block_size``³-voxel blocks of its 2³-voxel patch embeddings are masked; SwinUNETR's ``feature_size``,
    ``depths``, ``num_heads`` and ``use_v2`` come from ``network_options``, as for fine-tuning.

    Args:
        mask_ratio: fraction of the tokens (UNETR) or blocks (SwinUNETR) replaced by the mask token.
        block_size: SwinUNETR only: mask block edge in voxels (even, dividing the patch; default 16).
        val_patches: fixed patches per validation case.
    """

    name = "simmim"
    power = 1
    #: SwinUNETR's default mask block edge in voxels (8³ of its 2³-voxel patch embeddings)
    SWIN_BLOCK: ClassVar[int] = 16

    def __init__(self, manifest: Manifest | None = None, *, mask_ratio: float = 0.6, block_size: int | None = None,
                 val_patches: int = 2) -> None:
        super().__init__(manifest, mask_ratio=mask_ratio, val_patches=val_patches)
        if block_size is not None and (not isinstance(block_size, int) or block_size < 2 or block_size % 2):
            raise UserInputError(f"block_size {block_size} is not an even number of voxels.",
                                 fix="use e.g. --task-option block_size=16 (a multiple of the 2-voxel patches).")
        self.block_size = block_size

    def token(self, config: TrainConfig) -> int:
        return (self.block_size or self.SWIN_BLOCK) if config.network == "swinunetr" else TOKEN

    def build_model(self, plan: Plan, config: TrainConfig) -> nn.Module:
        if config.network == "swinunetr":
            return self._build_swin(plan, config)
        if config.network != "unetr":
            raise UserInputError(f"simmim pretrains the transformer of UNETR or SwinUNETR, not a {config.network}.",
                                 fix="use --network unetr or --network swinunetr (mae and crmae pretrain the others).")
        if self.block_size is not None:
            raise UserInputError("block_size applies to SwinUNETR; UNETR masks its 16³-voxel tokens.",
                                 fix="drop --task-option block_size, or use --network swinunetr.")
        from sarcomakit.models import build_network
        from sarcomakit.models.simmim import SimMIMViT

        patch, vit = self.vit_options(plan, config)
        unetr = build_network("unetr", in_channels=len(plan.channels), out_channels=1, patch_size=patch, **vit)
        return SimMIMViT(unetr.vit, len(plan.channels), token=TOKEN, mask_ratio=self.mask_ratio)

    def _build_swin(self, plan: Plan, config: TrainConfig) -> nn.Module:
        from sarcomakit.models import build_network
        from sarcomakit.models.swin_simmim import SimMIMSwin

        patch = [int(p) for p in (config.patch_size or plan.patch_size)]
        block = self.token(config)
        if any(p % block for p in patch):
            raise UserInputError(f"the patch {patch} is not a multiple of the {block}-voxel mask blocks.",
                                 fix="set --task-option block_size to a divisor of every patch axis (e.g. 16).")
        if config.network_options.get("input_layers"):
            raise UserInputError("simmim pretrains SwinUNETR's transformer itself, without input layers.",
                                 fix="pretrain without network_options.input_layers.")
        swin = build_network("swinunetr", in_channels=len(plan.channels), out_channels=1, patch_size=patch,
                             **config.network_options)
        return SimMIMSwin(swin.swinViT, len(plan.channels), block=block, mask_ratio=self.mask_ratio,
                          normalize=bool(swin.normalize))
