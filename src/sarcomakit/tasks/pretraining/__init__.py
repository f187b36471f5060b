"""Self-supervised pretraining tasks for 3D encoders (CNN and ViT masked autoencoders, SimMIM,
cross-modal masking)."""

from sarcomakit.tasks.pretraining.reconstruction import (
    CrossModalMaskedAutoencoderTask,
    MaskedAutoencoderTask,
    MaskedReconstructionObjective,
    MaskedReconstructionTask,
    masked_mse,
)
from sarcomakit.tasks.pretraining.vit_mae import SimMIMTask, ViTMaskedAutoencoderTask

__all__ = ["CrossModalMaskedAutoencoderTask", "MaskedAutoencoderTask", "MaskedReconstructionObjective",
           "MaskedReconstructionTask", "SimMIMTask", "ViTMaskedAutoencoderTask", "masked_mse"]
