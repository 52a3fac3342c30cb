"""Atomic file writes: readers (and resumed jobs) never see a partial file."""
import json
import os
import re
import tempfile
from typing import Any, BinaryIO, Callable, Iterable, List, Optional

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "remove_orphan_temp_files"]

_DEFAULT_FILE_MODE = 0o666  # what open() requests for a new file, before the umask
# Temp file of `atomic_write(<folder>/<name>)`: "<folder>/.<name>.<random>.tmp", the random part
# being tempfile's (lowercase letters, digits, "_"; never a dot, so the target name is unambiguous).
_TEMP_PREFIX, _TEMP_SEPARATOR, _TEMP_SUFFIX = ".", ".", ".tmp"
_TEMP_NAME = re.compile(
    re.escape(_TEMP_PREFIX) + r"(?P<target>.+)" + re.escape(_TEMP_SEPARATOR) + r"[a-z0-9_]+"
    + re.escape(_TEMP_SUFFIX), re.DOTALL)


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
    fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX + os.path.basename(path) + _TEMP_SEPARATOR,
                               suffix=_TEMP_SUFFIX, dir=directory)
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


def remove_orphan_temp_files(folder: "os.PathLike[str] | str", targets: Iterable[str],
                             older_than: Optional[float] = None) -> List[str]:
    """Remove the temp files ``atomic_write`` left in ``folder`` for the files named ``targets``.

    Such a file outlives its write only if the writing process was killed; a live writer's temp
    file must not be removed (its ``os.replace`` would fail). So call this only for targets no
    other live process writes, or give ``older_than`` (a ``time.time()``): only temp files last
    modified before it are removed. Returns the removed paths (none for a missing folder).
    """
    targets = set(targets)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or match.group("target") not in targets or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if older_than is not None and entry.stat().st_mtime >= older_than:
                continue
            os.remove(entry.path)
        except FileNotFoundError:  # its writer finished meanwhile (possible with older_than)
            continue
        removed.append(entry.path)
    return removed
