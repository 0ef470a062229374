"""Turn a ``state_dict()`` tree into tensors + JSON and back, without pickle.

A checkpoint tree is whatever ``state_dict()`` methods return: nested dicts,
lists and tuples whose leaves are torch tensors, numpy arrays or scalars, plain
Python numbers, bools, strings and ``None``. :func:`flatten` splits it into

* a flat ``{name: tensor}`` dict destined for a safetensors file (numpy arrays
  travel as their raw bytes in a ``uint8`` tensor), and
* a JSON-compatible tree where every tensor is replaced by a reference to its
  name and every value JSON cannot express exactly is wrapped in a one-key tag
  object (``{"__tensor__": ...}``, ``{"__tuple__": [...]}``...).

:func:`unflatten` reverses this exactly: dict keys keep their type (optimizer
``state`` dicts use ``int`` keys), tuples stay tuples, ``nan``/``inf`` survive,
numpy arrays come back as numpy arrays of the same dtype. Anything else is
refused with a :class:`CheckpointError` naming the key path, because silently
pickling an arbitrary object is how checkpoints become code execution.

:func:`safetensors_chunks` lays the flat tensors out in the safetensors file
format as a list of buffers that point at the tensors' own memory. The writer in
:mod:`topoclass.checkpoint.storage` hashes and writes them directly, so the
payload is never copied into an intermediate ``bytes`` object; reading always
goes through the ``safetensors`` library, which validates the layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from topoclass.errors import CheckpointError
from topoclass.tensorfile import DTYPE_CODES, tensor_chunks

TENSOR_TAG = "__tensor__"
NDARRAY_TAG = "__ndarray__"
TUPLE_TAG = "__tuple__"
DICT_TAG = "__dict__"
FLOAT_TAG = "__float__"
_TAGS = frozenset({TENSOR_TAG, NDARRAY_TAG, TUPLE_TAG, DICT_TAG, FLOAT_TAG})

_SAFETENSORS_DTYPES = DTYPE_CODES
_NUMPY_KINDS = frozenset("biufc")  # bool, signed, unsigned, float, complex
_RESERVED_TENSOR_NAMES = frozenset({"__metadata__"})  # the safetensors header's own key


def flatten(tree: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``tree`` into ``({name: tensor}, json_tree)``; see the module docstring.

    Tensors are detached, moved to the CPU and made contiguous; a CPU tensor that
    already is contiguous is not copied, so write the result before the input
    changes (the storage layer does so immediately).
    """
    tensors: dict[str, torch.Tensor] = {}
    json_tree = _encode(tree, (), tensors)
    return tensors, json_tree


def unflatten(tensors: Mapping[str, torch.Tensor], json_tree: Any) -> Any:
    """Rebuild the tree that :func:`flatten` split, from its two halves."""
    return _decode(json_tree, tensors, ())


def _path_text(path: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in path) or "<root>"


def _new_name(path: tuple[Any, ...], tensors: dict[str, torch.Tensor]) -> str:
    base = _path_text(path)
    name, suffix = base, 1
    while name in tensors or name in _RESERVED_TENSOR_NAMES:
        suffix += 1
        name = f"{base}#{suffix}"
    return name


def _encode(value: Any, path: tuple[Any, ...], tensors: dict[str, torch.Tensor]) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)  # int subclasses (IntEnum...) are stored as plain ints
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return {FLOAT_TAG: repr(float(value))}  # 'nan', 'inf', '-inf'
    if isinstance(value, torch.Tensor):
        return {TENSOR_TAG: _add_tensor(value, path, tensors)}
    if isinstance(value, (np.ndarray, np.generic)):
        return _encode_numpy(value, path, tensors)
    if isinstance(value, Mapping):
        return _encode_mapping(value, path, tensors)
    if isinstance(value, tuple):
        return {TUPLE_TAG: [_encode(item, (*path, i), tensors) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, (*path, i), tensors) for i, item in enumerate(value)]
    raise CheckpointError(
        f"cannot checkpoint a value of type {type(value).__name__} at '{_path_text(path)}' "
        "(only tensors, numpy arrays, numbers, bools, strings, None, dicts, lists and tuples)"
    )


def _encode_mapping(value: Mapping[Any, Any], path: tuple[Any, ...], tensors: dict[str, torch.Tensor]) -> Any:
    for key in value:
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise CheckpointError(
                f"cannot checkpoint dict key {key!r} of type {type(key).__name__} at "
                f"'{_path_text(path)}' (keys must be str or int)"
            )
    encoded = [(key, _encode(item, (*path, key), tensors)) for key, item in value.items()]
    if all(isinstance(key, str) and key not in _TAGS for key in value):
        return dict(encoded)  # the common case stays readable JSON
    return {DICT_TAG: [[key, item] for key, item in encoded]}


def _add_tensor(value: torch.Tensor, path: tuple[Any, ...], tensors: dict[str, torch.Tensor]) -> str:
    if value.layout != torch.strided:
        raise CheckpointError(f"cannot checkpoint a {value.layout} tensor at '{_path_text(path)}'")
    if value.dtype not in _SAFETENSORS_DTYPES:
        raise CheckpointError(f"cannot checkpoint a tensor of dtype {value.dtype} at '{_path_text(path)}'")
    name = _new_name(path, tensors)
    tensors[name] = value.detach().to("cpu").contiguous()
    return name


def _encode_numpy(
    value: np.ndarray | np.generic, path: tuple[Any, ...], tensors: dict[str, torch.Tensor]
) -> dict[str, Any]:
    array = np.asarray(value)
    if array.dtype.kind not in _NUMPY_KINDS or array.dtype.fields is not None:
        raise CheckpointError(
            f"cannot checkpoint a numpy array of dtype {array.dtype} at '{_path_text(path)}'"
        )
    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    name = _new_name(path, tensors)
    tensors[name] = torch.from_numpy(raw.copy())
    return {
        NDARRAY_TAG: name,
        "dtype": array.dtype.str,  # includes byte order, e.g. '<u4'
        "shape": list(array.shape),
        "scalar": isinstance(value, np.generic),
    }


def _decode(node: Any, tensors: Mapping[str, torch.Tensor], path: tuple[Any, ...]) -> Any:
    if isinstance(node, list):
        return [_decode(item, tensors, (*path, i)) for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    if TENSOR_TAG in node:
        return _tensor(node[TENSOR_TAG], tensors, path)
    if NDARRAY_TAG in node:
        raw = _tensor(node[NDARRAY_TAG], tensors, path).numpy()
        array = raw.copy().view(np.dtype(node["dtype"])).reshape(node["shape"])
        return array[()] if node.get("scalar") else array
    if TUPLE_TAG in node:
        return tuple(_decode(item, tensors, (*path, i)) for i, item in enumerate(node[TUPLE_TAG]))
    if DICT_TAG in node:
        return {key: _decode(item, tensors, (*path, key)) for key, item in node[DICT_TAG]}
    if FLOAT_TAG in node:
        return float(node[FLOAT_TAG])
    return {key: _decode(item, tensors, (*path, key)) for key, item in node.items()}


def _tensor(name: str, tensors: Mapping[str, torch.Tensor], path: tuple[Any, ...]) -> torch.Tensor:
    try:
        return tensors[name]
    except KeyError:
        raise CheckpointError(f"tensor '{name}' referenced at '{_path_text(path)}' is missing") from None


def safetensors_chunks(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> list[bytes | memoryview]:
    """The safetensors file for ``tensors`` (and string ``metadata``) as buffers to write in order;
    see :mod:`topoclass.tensorfile`. The same input always gives the same bytes."""
    try:
        return tensor_chunks(tensors, metadata)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
