"""The training engine: configuration, folds, patch sampling, the loop, checkpoints, run folders."""
