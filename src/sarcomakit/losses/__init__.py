"""Losses shared by training and the baselines: segmentation, Cox survival (with a risk memory), grade, and
the partial-label multi-task combination with its weighting."""
