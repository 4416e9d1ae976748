"""Deterministic, atomic `.npz` writing, shared by the offline rebuild and the shard writer.

Files go to a hidden temporary name in the same directory (ending in `.tmp`, never `.npz`, so
neither the loader nor a shard glob takes it for data), are `fsync`ed, then renamed.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
"""The fixed timestamp written into every zip entry, so equal arrays give equal bytes."""


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write a compressed `.npz` whose bytes depend only on the arrays and their order.

    `np.savez_compressed` stamps the current time into every zip entry; this writer uses a fixed
    timestamp and fixed attributes, then flushes and `fsync`s the file.

    **Arguments:**

    - `path`: the file to write (overwritten).
    - `arrays`: name -> array; each becomes `<name>.npy` in the archive.
    """
    with open(path, "wb") as raw:
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for key, arr in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
        raw.flush()
        os.fsync(raw.fileno())


def tmp_path(final: Path) -> Path:
    """The hidden temporary name `final` is written under first: `.<name>.<pid>.<thread>.tmp`
    in the same directory (unique per process and thread)."""
    return final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def fsync_dir(directory: Path) -> None:
    """`fsync` a directory, so that renames into it are durable (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """`write_npz` to a temporary name, then rename it to
    `path`; on failure nothing is left behind (an existing `path` is kept)."""
    tmp = tmp_path(path)
    try:
        write_npz(tmp, arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
