"""What the graph and embedding store writers share: named arrays appended chunk by chunk.

Each named part is kept in memory or appended to its own raw file in ``directory``, so that
featurizing a dataset of any size holds one chunk at a time. The finished parts become a
cache file (:meth:`ChunkedWriter.parts`, streamed) or a store read from them (memory-mapped).
A writer says how large each part has grown (``_shapes``) and which store it makes.
"""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path

import numpy as np


class ChunkedWriter:
    """Chunks of named arrays of fixed dtypes, with per-material counts and finiteness flags."""

    store_type: type[Sized]  # the store this writer's parts make

    def __init__(self, dtypes: dict[str, np.dtype], directory: Path | None) -> None:
        self.directory = directory
        self._dtypes = dtypes
        self._chunks: dict[str, list[np.ndarray]] = {name: [] for name in dtypes}
        self._node_counts: list[np.ndarray] = []
        self._finite: list[np.ndarray] = []
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for name in dtypes:
                (directory / name).write_bytes(b"")

    def __len__(self) -> int:
        return int(sum(len(counts) for counts in self._node_counts))

    def _append(self, arrays: dict[str, np.ndarray], node_counts: np.ndarray, finite: np.ndarray) -> None:
        """Keep one chunk: every part's rows, each material's atom count and finiteness."""
        self._node_counts.append(node_counts)
        self._finite.append(finite)
        for name, array in arrays.items():
            array = np.ascontiguousarray(array, dtype=self._dtypes[name])
            if self.directory is None:
                self._chunks[name].append(array)
            else:
                with (self.directory / name).open("ab") as out:
                    out.write(array.tobytes())

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def finite(self) -> np.ndarray:
        """Whether each material added holds only finite numbers, [len(self)] bool.

        Known from each chunk as it is added: checking a store on disk afterwards would page
        every material of the dataset into memory.
        """
        return np.concatenate(self._finite) if self._finite else np.zeros(0, dtype=bool)

    def has_files_for(self, store: object) -> bool:
        """Whether ``store`` is this writer's, written to files (so its parts can be streamed)."""
        return (
            self.directory is not None
            and isinstance(store, self.store_type)
            and len(self) > 0
            and len(store) == len(self)
        )

    def parts(self) -> dict[str, tuple[np.dtype, tuple[int, ...], Path]]:
        """Each raw file on disk with its dtype and shape (for streaming into a cache file)."""
        if self.directory is None:
            raise ValueError("an in-memory writer has no files")
        shapes = self._shapes()
        return {name: (dtype, shapes[name], self.directory / name) for name, dtype in self._dtypes.items()}

    def _arrays(self) -> dict[str, np.ndarray]:
        """Every part: joined in memory, or memory-mapped (copy-on-write) from its file."""
        shapes = self._shapes()
        arrays = {}
        for name, dtype in self._dtypes.items():
            if self.directory is None:
                chunks = self._chunks[name]
                arrays[name] = np.concatenate(chunks) if chunks else np.zeros(shapes[name], dtype=dtype)
            elif np.prod(shapes[name]) == 0:
                arrays[name] = np.zeros(shapes[name], dtype=dtype)
            else:
                arrays[name] = np.memmap(self.directory / name, dtype=dtype, mode="c", shape=shapes[name])
        return arrays
