"""Reading and writing images with their geometry, and atomic file output."""

from sarcomakit.core.io.atomic import atomic_dir, atomic_path, write_json, write_text
from sarcomakit.core.io.image import Geometry, read_image, write_image

__all__ = ["Geometry", "atomic_dir", "atomic_path", "read_image", "write_image", "write_json", "write_text"]
