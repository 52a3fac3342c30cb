"""Atomic file writes: readers (and resumed jobs) never see a partial file."""
import json
import os
import tempfile
from typing import Any, BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json"]

_DEFAULT_FILE_MODE = 0o666  # what open() requests for a new file, before the umask


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore
    os.umask(mask)
    return mask


def atomic_write(path: "os.PathLike[str] | str", write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(f)`` on a temp file next to ``path``, fsync it, then ``os.replace`` it.

    The file gets the permissions a plain ``open(path, "w")`` would (0666 minus the umask; mkstemp
    alone gives 0600). The temp file is removed if ``write`` raises; the folder is created if
    needed."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, _DEFAULT_FILE_MODE & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path, obj: Any, indent: int = 1, **dumps_kwargs) -> None:
    text = json.dumps(obj, indent=indent, **dumps_kwargs) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
