"""Atomic HDF5 writes shared by every file the project makes (tables, kernels).

``atomic_h5(path)`` yields an open ``h5py.File`` on a temporary file in the target's
directory (which must exist: nothing is created for the caller); on a clean exit the file is
flushed, fsynced and renamed over ``path`` (``os.replace`` is atomic on POSIX), so a reader
sees the old file or the new one, never half of one; on any error the temporary file is
removed and ``path`` is untouched. The file gets the permissions a plain ``open`` would give
(0666 less the umask, usually 0644), so tables and kernels can be shared and served.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_h5(path: str | Path) -> Iterator["h5py.File"]:  # noqa: F821
    import h5py

    from volume.checks import output_path

    p = output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; the file gets the mode `open` would give
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status), else by the
    set-and-restore dance (not thread-safe, hence the first choice)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_format(f: "h5py.File", path: str | Path, fmt: str, version: int, what: str, error: type) -> None:  # noqa: F821
    """Refuse a file whose ``format``/``format_version`` root attributes are not ours,
    raising ``error`` with a message that names the file."""
    if f.attrs.get("format") != fmt:
        raise error(f"{str(path)!r} is not a {what} (HDF5 attribute format != {fmt!r})")
    found = int(f.attrs.get("format_version", -1))
    if found != version:
        raise error(f"{str(path)!r} has {what} format version {found}; this library reads {version}")
