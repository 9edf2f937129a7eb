"""Tiny, valid PNG files built with zlib and struct, standing in for generated images."""

from __future__ import annotations

import struct
import zlib

__all__ = ["PNG_SIGNATURE", "colour_for", "png_bytes"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def colour_for(job_id: int, index: int) -> tuple[int, int, int]:
    """Return a stable RGB colour for one output image of a job."""
    mixed = (job_id * 2654435761 + index * 40503 + 0x5BD1E995) & 0xFFFFFF
    return (mixed >> 16) & 0xFF, (mixed >> 8) & 0xFF, mixed & 0xFF


def png_bytes(colour: tuple[int, int, int], width: int = 8, height: int = 8) -> bytes:
    """Return a complete PNG file: a ``width`` x ``height`` RGB image of one colour."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + bytes(colour) * width
    pixels = zlib.compress(row * height)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")
