"""Experiments: several models on the same folds and seeds, compared with confidence intervals."""
