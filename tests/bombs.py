"""Decompression bombs built in a second, without ever holding their inflated bytes.

A deflate stream may be cut into blocks that each end with a full flush (byte-aligned, no
back-references across them): the compressed form of one mebibyte of zeros is then the same
bytes every time, so a gibibyte is that block repeated 1,024 times. CRC-32s are computed over
the inflated bytes chunk by chunk. The results are real zips, tar.gz files and Parquet files
that stock readers inflate to the sizes they declare.
"""

from __future__ import annotations

import io
import struct
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB


def deflate_parts(parts: list[tuple[bytes, int]]) -> tuple[bytes, int, int]:
    """Raw deflate of each (chunk, repeat) in order: (compressed, crc32, inflated size)."""
    out = bytearray()
    crc = 0
    size = 0
    for chunk, repeat in parts:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
        out += block * repeat
        for _ in range(repeat):
            crc = zlib.crc32(chunk, crc)
        size += len(chunk) * repeat
    out += zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # the final, empty block
    return bytes(out), crc, size


def write_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> None:
    """Writes (name, deflated bytes, crc32, inflated size, declared size) members by hand, so a
    member can declare another size than the one it inflates to."""
    body = bytearray()
    central = bytearray()
    for name, data, crc, _, declared in members:
        encoded = name.encode()
        offset = len(body)
        body += struct.pack(
            zipfile.structFileHeader,
            zipfile.stringFileHeader,
            20,
            0,
            0,
            zipfile.ZIP_DEFLATED,
            0,
            0x21,
            crc,
            len(data),
            declared,
            len(encoded),
            0,
        )
        body += encoded + data
        central += struct.pack(
            zipfile.structCentralDir,
            zipfile.stringCentralDir,
            20,
            3,
            20,
            0,
            0,
            zipfile.ZIP_DEFLATED,
            0,
            0x21,
            crc,
            len(data),
            declared,
            len(encoded),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        central += encoded
    end = struct.pack(
        zipfile.structEndArchive,
        zipfile.stringEndArchive,
        0,
        0,
        len(members),
        len(members),
        len(central),
        len(body),
        0,
    )
    path.write_bytes(bytes(body + central + end))


def skops_bomb(path: Path, skops_bytes: bytes, *, target: str, lie: bool = False) -> str:
    """A real skops file whose `target` member ("array" = its largest .npy, or "schema.json")
    inflates to 1 GiB; with `lie`, the member declares its original size. Returns the name."""
    import numpy as np

    with zipfile.ZipFile(io.BytesIO(skops_bytes)) as source:
        originals = {info.filename: source.read(info) for info in source.infolist()}
    if target == "array":
        target = max((n for n in originals if n.endswith(".npy")), key=lambda n: len(originals[n]))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f8", "fortran_order": False, "shape": (GiB // 8,)}
        )
        parts = [(header.getvalue(), 1), (bytes(MiB), 1024)]
    else:
        # A gibibyte of spaces, then the real schema: still valid JSON.
        parts = [(b" " * MiB, 1024), (originals[target], 1)]
    members = []
    for name, content in originals.items():
        if name == target:
            data, crc, size = deflate_parts(parts)
            members.append((name, data, crc, size, len(content) if lie else size))
        else:
            data, crc, size = deflate_parts([(content, 1)])
            members.append((name, data, crc, size, size))
    write_zip(path, members)
    return target


def tar_gz_bomb(path: Path, member: str) -> None:
    """A tar.gz holding one regular file `member` of 1 GiB of zeros (about 1 MB on disk)."""
    info = tarfile.TarInfo(member)
    info.size = GiB
    info.mtime = int(time.time())
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    # Data, then the two zero blocks that end the archive, padded to tar's 10 KiB records.
    stream_size = len(header) + GiB + 1024
    padding = -stream_size % tarfile.RECORDSIZE
    data, crc, size = deflate_parts([(header, 1), (bytes(MiB), 1024), (bytes(1024 + padding), 1)])
    gzip_header = b"\x1f\x8b\x08\x00" + struct.pack("<L", 0) + b"\x02\xff"
    path.write_bytes(gzip_header + data + struct.pack("<LL", crc, size & 0xFFFFFFFF))


def parquet_rows_bomb(path: Path) -> None:
    """A Parquet file of a few kilobytes declaring 2**27 rows of 0.0 (1 GiB as float64)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chunk = pa.table({"x": pa.array([0.0] * MiB), "y": pa.array([0] * MiB)})
    with pq.ParquetWriter(path, chunk.schema, compression="zstd") as writer:
        for _ in range(128):
            writer.write_table(chunk, row_group_size=MiB)


def parquet_encoding_bomb(path: Path, *, rows: int = 1_000_000) -> None:
    """A small Parquet file of `rows` copies of one 1 KiB string: dictionary encoding stores it
    once, and every reader decodes it to `rows` KiB (about 1 GB); rows stay under the limit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    value = "x" * 1024
    batch = 65536
    schema = pa.schema([("x", pa.string()), ("y", pa.int64())])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        written = 0
        while written < rows:
            n = min(batch, rows - written)
            writer.write_table(pa.table({"x": [value] * n, "y": [0] * n}, schema=schema))
            written += n
