"""Training configuration: every knob of a segmentation run, resolved and saved in the run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_text


class TrainConfig(BaseModel):
    """What to train and how. ``None`` fields are filled from the plan (patch and batch size).

    The defaults follow nnU-Net where it matters (SGD with Nesterov momentum 0.99, initial learning
    rate 1e-2 with a poly schedule of exponent 0.9, Dice + cross-entropy, a third of the patches
    forced to contain foreground), scaled down to epochs of 50 iterations.
    """

    task: str = "segmentation"
    task_options: dict[str, Any] = Field(default_factory=dict)
    network: str = "resunet"
    network_options: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(100, ge=1)
    iterations_per_epoch: int = Field(50, ge=1)
    batch_size: int | None = Field(None, ge=1)
    patch_size: list[int] | None = None
    optimizer: Literal["sgd", "adamw"] = "sgd"
    learning_rate: float = Field(1e-2, gt=0)
    weight_decay: float = Field(3e-5, ge=0)
    momentum: float = Field(0.99, ge=0, lt=1)
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    foreground_fraction: float = Field(0.33, ge=0, le=1)
    augmentation: Literal["default", "light", "none"] = "default"
    n_folds: int = Field(5, ge=2)
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    num_workers: int | None = Field(None, ge=0)
    validate_every: int = Field(1, ge=1)
    #: "validation": checkpoint_best.pt is the epoch with the best validation score; "last": the final
    #: epoch (as nnU-Net's checkpoint_final), more robust when the validation fold is small
    checkpoint_selection: Literal["validation", "last"] = "validation"
    sw_overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(2, ge=1)
    #: fine-tuning (sarcomakit.training.finetuning): the checkpoint or pretraining run folder to start from
    init_checkpoint: str | None = None
    #: which pretrained parts to load ("encoder+decoder": everything but the output layer)
    init_parts: Literal["encoder", "encoder+decoder"] = "encoder"
    #: epochs during which the loaded parts are not updated (learning rate 0)
    freeze_epochs: int = Field(0, ge=0)
    #: epochs of linear learning-rate warm-up of each part (after its freeze); None: a tenth of the epochs when
    #: initialised from a checkpoint, else none
    warmup_epochs: int | None = Field(None, ge=0)

    def save(self, path: str | Path) -> Path:
        return write_text(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        try:
            return cls.model_validate(json.loads(p.read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise UserInputError("training config not found.", path=p,
                                 fix="point at a run folder written by 'sarcomakit train'.") from exc
        except (json.JSONDecodeError, ValidationError) as exc:
            raise UserInputError(f"invalid training config ({exc}).", path=p,
                                 fix="fix the values or delete the file to use the defaults.") from exc

    def updated(self, **changes: Any) -> TrainConfig:
        """A copy with the given non-None fields replaced (and validated)."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        try:
            return TrainConfig.model_validate(data)
        except ValidationError as exc:
            raise UserInputError(f"invalid training option: {exc.errors()[0]['loc'][0]} "
                                 f"{exc.errors()[0]['msg']}.", fix="see 'sarcomakit train --help'.") from exc
