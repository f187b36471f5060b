"""Patch features: encoders (with local weights), embedding of tiles, SimCLR pretraining."""
