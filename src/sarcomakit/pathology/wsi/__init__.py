"""Whole-slide images: readers, tissue detection, tiling, tiles, stain handling, CLAM-style HDF5, slide manifests and
synthetic slides.
"""
