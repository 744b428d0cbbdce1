#!/usr/bin/env python3
"""
Prints the expected digests used by BlockHashTests, computed by ovirt-imageio's own code.

Usage: make_blkhash_vectors.py /path/to/ovirt-imageio-checkout

The images are described by segments and generated here and in the C# test
(TestImage.cs) with the same deterministic byte stream. The digest is computed
twice: with imageio's checksum operation (extents + zero detection, as the
daemon does) and with blkhash.checksum() on a plain file (no extents, as the
client does). Both must agree.

imageio's ioutil is a C extension; its is_zero() is replaced by a pure python
equivalent, which does not change any digest (zero detection only picks a
cached digest of the same bytes).
"""

import hashlib
import os
import sys
import tempfile
import types

sys.path.insert(0, sys.argv[1])
ioutil = types.ModuleType("ovirt_imageio._internal.ioutil")
ioutil.is_zero = lambda buf: not any(bytes(buf))
sys.modules["ovirt_imageio._internal.ioutil"] = ioutil

from ovirt_imageio._internal import blkhash  # noqa: E402
from ovirt_imageio._internal.handlers import checksum  # noqa: E402

KiB = 1024
MiB = 1024 * KiB


def data_stream(seed, length):
    out = bytearray()
    j = 0
    while len(out) < length:
        out += hashlib.sha256(f"{seed}:{j}".encode()).digest()
        j += 1
    return bytes(out[:length])


def build(segments):
    """segments: list of ("data", seed, length) | ("zero", length) | ("written-zero", length)."""
    image = bytearray()
    extents = []
    for seg in segments:
        if seg[0] == "data":
            chunk = data_stream(seg[1], seg[2])
            zero = False
        elif seg[0] == "written-zero":
            chunk = bytes(seg[1])
            zero = False  # reported as data, detected by scanning
        else:
            chunk = bytes(seg[1])
            zero = True
        if chunk:
            extents.append(types.SimpleNamespace(start=len(image), length=len(chunk), zero=zero))
        image += chunk
    return bytes(image), extents


class Backend:
    def __init__(self, image, extents):
        self._image = image
        self._extents = extents
        self._pos = 0

    def size(self):
        return len(self._image)

    def extents(self, context):
        assert context == "zero"
        return iter(self._extents)

    def seek(self, pos):
        self._pos = pos

    def readinto(self, view):
        n = len(view)
        view[:] = self._image[self._pos:self._pos + n]
        self._pos += n
        return n


MIXED = [
    ("data", "mixed-a", 1 * MiB + 5),
    ("zero", 3 * MiB - 5),
    ("data", "mixed-b", 100 * KiB),
    ("zero", 5 * MiB),
    ("written-zero", 2 * MiB),
    ("data", "mixed-c", 777),
    ("zero", 1 * MiB + 3),
]

CASES = [
    ("Empty", [], "blake2b", 4 * MiB),
    ("AllZero8MiB", [("zero", 8 * MiB)], "blake2b", 4 * MiB),
    ("Random9MiBPlus12345", [("data", "random", 9 * MiB + 12345)], "blake2b", 4 * MiB),
    ("Random3MiBPlus100", [("data", "random", 3 * MiB + 100)], "blake2b", 1 * MiB),
    ("ZeroPartialTail", [("data", "tail", 1 * MiB), ("zero", 1 * MiB + 4096)], "blake2b", 1 * MiB),
    ("Mixed", MIXED, "blake2b", 4 * MiB),
    ("Mixed", MIXED, "blake2b", 1 * MiB),
    ("Mixed", MIXED, "sha1", 1 * MiB),
    ("Mixed", MIXED, "sha256", 1 * MiB),
    ("Mixed", MIXED, "sha384", 1 * MiB),
    ("Mixed", MIXED, "sha512", 1 * MiB),
    ("Mixed", MIXED, "md5", 1 * MiB),
    ("Mixed", MIXED, "sha3_256", 1 * MiB),
    ("Mixed", MIXED, "sha3_512", 1 * MiB),
]

for name, segments, algorithm, block_size in CASES:
    image, extents = build(segments)
    result = checksum.compute(Backend(image, extents), bytearray(block_size), algorithm=algorithm)
    with tempfile.NamedTemporaryFile() as f:
        f.write(image)
        f.flush()
        plain = blkhash.checksum(
            f.name, block_size=block_size, algorithm=algorithm,
            digest_size=32 if algorithm.startswith("blake2") else None)
    assert plain["checksum"] == result["checksum"], (name, algorithm)
    print(f'{{ "{name}", "{algorithm}", {block_size}, "{result["checksum"]}" }},')
