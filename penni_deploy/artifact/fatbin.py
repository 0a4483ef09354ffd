"""Read the NVIDIA fatbinaries embedded in a compiled library: which architectures they carry.

Layout (little endian), as nvcc writes it: a 16-byte header — magic ``0xBA55ED50``, u16 version,
u16 header size, u64 size of the entries — then entries, each a header — u16 kind (1 = PTX,
2 = ELF/SASS), u16 version, u32 header size, u64 payload size, ..., u32 architecture (e.g. 80) at
byte 28 — followed by its payload. Used to record and test what a CUDA artifact can run on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = 0xBA55ED50
_HEADER = struct.Struct("<IHHQ")
_KINDS = {1: "ptx", 2: "sass"}


@dataclass(frozen=True)
class FatbinEntry:
    kind: str  # "sass" (machine code) or "ptx"
    arch: int  # compute capability × 10, e.g. 80

    @property
    def name(self) -> str:
        return f"sm_{self.arch}" if self.kind == "sass" else f"compute_{self.arch}"


def find_fatbins(blob: bytes) -> list[list[FatbinEntry]]:
    """Every well-formed fatbinary in ``blob`` (e.g. a shared library), as its list of entries."""
    found = []
    start = 0
    magic = struct.pack("<I", MAGIC)
    while (start := blob.find(magic, start)) >= 0:
        entries = _parse(blob, start)
        if entries:
            found.append(entries)
        start += 4
    return found


def _parse(blob: bytes, offset: int) -> list[FatbinEntry] | None:
    if offset + _HEADER.size > len(blob):
        return None
    _, version, header_size, size = _HEADER.unpack_from(blob, offset)
    if version != 1 or header_size != _HEADER.size or offset + header_size + size > len(blob):
        return None
    entries = []
    pos, end = offset + header_size, offset + header_size + size
    while pos + 32 <= end:
        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", blob, pos)
        (arch,) = struct.unpack_from("<I", blob, pos + 28)
        if kind not in _KINDS or entry_header < 32 or pos + entry_header + payload > end:
            return None
        entries.append(FatbinEntry(_KINDS[kind], arch))
        pos += entry_header + payload
    return entries or None


def embedded_architectures(blob: bytes) -> list[str]:
    """Sorted names (``sm_80``, ``compute_90``) of all code embedded in ``blob``."""
    names = {entry.name for entries in find_fatbins(blob) for entry in entries}
    return sorted(names, key=lambda n: (n.startswith("compute"), int(n.split("_")[1].rstrip("af"))))
