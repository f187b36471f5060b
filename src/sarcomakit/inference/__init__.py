"""Inference: sliding-window prediction, fold ensembles and restoring predictions to the input geometry."""
