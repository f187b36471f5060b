"""Multipart responses in MONAI Label's shape: a ``params`` JSON field and the result image as a file part.

MONAI Label answers ``/infer`` with ``multipart/form-data`` whose ``params`` part (no file name) holds the
JSON result and whose ``image`` part (with a file name) holds the mask; its client parses the answer with
``cgi.FieldStorage`` and keeps file parts by file name, so the name must be a plain file name.
"""

from __future__ import annotations

import json
import uuid
from typing import Any


def encode_multipart(params: dict[str, Any], filename: str | None, content: bytes | None,
                     content_type: str = "application/octet-stream") -> tuple[bytes, str]:
    """Body and content type of a multipart answer with ``params`` and, when given, one file part ``image``."""
    boundary = uuid.uuid4().hex
    lines: list[bytes] = [f"--{boundary}".encode(), b'Content-Disposition: form-data; name="params"',
                          b"Content-Type: application/json", b"", json.dumps(params).encode()]
    if filename is not None and content is not None:
        lines += [f"--{boundary}".encode(),
                  f'Content-Disposition: form-data; name="image"; filename="{filename}"'.encode(),
                  f"Content-Type: {content_type}".encode(), b"", content]
    lines += [f"--{boundary}--".encode(), b""]
    return b"\r\n".join(lines), f"multipart/form-data; boundary={boundary}"
