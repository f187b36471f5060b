"""Self-supervised pretraining tasks for 3D encoders (masked autoencoders, cross-modal masking)."""

from sarcomakit.tasks.pretraining.reconstruction import (
    CrossModalMaskedAutoencoderTask,
    MaskedAutoencoderTask,
    MaskedReconstructionObjective,
    MaskedReconstructionTask,
    masked_mse,
)

__all__ = ["CrossModalMaskedAutoencoderTask", "MaskedAutoencoderTask", "MaskedReconstructionObjective",
           "MaskedReconstructionTask", "masked_mse"]
