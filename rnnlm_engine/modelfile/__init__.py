"""Model files: one file holds a model's config, parameters, vocabulary, metadata and
optional training state, written atomically and validated completely when read.

A model file is hostile input until proven otherwise. ``load`` reads the whole file (at
most ``max_bytes``), checks the magic bytes, the declared lengths (the header's at most
``max_header_bytes``) and the SHA-256 digest, counts what unpacking the msgpack header
would allocate (at most HEADER_MEMORY_FACTOR x its size), unpacks it with bounded
lengths, then checks every key, dtype, shape and
offset, and that every float is finite, in the fixed order given in docs/FORMAT.md. Any
defect raises one ``ModelFileError`` naming the file and the defect. Nothing is executed
(no pickle), and the parameter arrays handed out are read-only float32 views of the bytes
read, never of a file that could change under them.

``save`` validates its inputs, then writes a temporary file in the target's folder,
fsyncs it and renames it over the target: a crash or Ctrl-C during a save leaves any
previous file at that path intact.

Layout (all integers little-endian; details in docs/FORMAT.md)::

    MAGIC (8) | header length H (u64) | data length N (u64) | header: msgpack map (H)
    | zero padding to a multiple of 64 | data: tensors' raw float32 bytes (N) | SHA-256 (32)

The package: format.py (the constants, ModelFile, the checks both sides share), write.py
(save), read.py (load, read_info).
"""

from .format import (
    ALIGN,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DIGEST_SIZE,
    DTYPE,
    FEATURES,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEADER_MEMORY_FACTOR,
    HEADER_MEMORY_SLACK,
    INT8,
    MAGIC,
    MAX_CUTOFFS,
    MAX_DEPTH,
    MAX_ELEMENTS,
    MAX_HEADER_BYTES,
    MAX_LAYERS,
    MAX_NDIM,
    MAX_VOCAB_SIZE,
    MAX_WIDTH,
    PREAMBLE,
    TRAINING_FACTOR,
    TRAINING_SLACK_BYTES,
    ModelFile,
)
from .read import load, read_info
from .write import save

__all__ = [
    "ALIGN",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DIGEST_SIZE",
    "DTYPE",
    "FEATURES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HEADER_MEMORY_FACTOR",
    "HEADER_MEMORY_SLACK",
    "INT8",
    "MAGIC",
    "MAX_CUTOFFS",
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "MAX_HEADER_BYTES",
    "MAX_LAYERS",
    "MAX_NDIM",
    "MAX_VOCAB_SIZE",
    "MAX_WIDTH",
    "PREAMBLE",
    "TRAINING_FACTOR",
    "TRAINING_SLACK_BYTES",
    "ModelFile",
    "load",
    "read_info",
    "save",
]
