"""Whole-slide histopathology: slide readers, tissue detection, tiling, stain handling, MIL and maps."""
