"""The safetensors file layout, written by hand only where the library cannot: streamed, deterministic.

Layout (the safetensors format): an 8-byte little-endian header length, a JSON header
padded with spaces to a multiple of 8, then every tensor's bytes back to back. The
library's writer needs every tensor in memory at once and orders its metadata
differently from call to call; checkpoints need identical bytes for identical
tensors, and a million-structure featurization cache needs parts streamed from disk.
Reading always goes through the ``safetensors`` library, which validates the layout.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

# safetensors dtype codes for every torch dtype topoclass writes.
DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _name):  # unsigned wide dtypes exist from torch 2.3 on
        DTYPE_CODES[getattr(torch, _name)] = _code
NUMPY_CODES = {
    "float32": "F32",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "bool": "BOOL",
    "uint8": "U8",
}


def header(
    entries: Sequence[tuple[str, str, Sequence[int], int]], metadata: Mapping[str, str] | None = None
) -> bytes:
    """The length prefix and JSON header for ``(name, dtype code, shape, byte size)`` entries, in order."""
    layout: dict[str, Any] = {}
    if metadata:
        layout["__metadata__"] = {key: str(metadata[key]) for key in sorted(metadata)}
    offset = 0
    for name, code, shape, size in entries:
        layout[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(layout, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def tensor_chunks(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> list[bytes | memoryview]:
    """The whole file for in-memory ``tensors`` as buffers to write in order (zero-copy views:
    the tensors must stay unchanged until the chunks are written)."""
    entries, payload = [], []
    for name, tensor in tensors.items():
        if not tensor.is_contiguous() or tensor.device.type != "cpu":
            raise ValueError(f"tensor '{name}' must be a contiguous CPU tensor")
        size = tensor.numel() * tensor.element_size()
        entries.append((name, DTYPE_CODES[tensor.dtype], list(tensor.shape), size))
        if size:
            payload.append(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return [header(entries, metadata), *payload]


def numpy_code(array_dtype: np.dtype) -> str:
    """The safetensors code of a NumPy dtype."""
    return NUMPY_CODES[np.dtype(array_dtype).name]
