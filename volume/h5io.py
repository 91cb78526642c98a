"""Atomic HDF5 writes shared by every file the project makes (tables, kernels).

``atomic_h5(path)`` yields an open ``h5py.File`` on a temporary file ``NAME.XXXX.tmp`` in the
target's directory; on a clean exit the file is flushed, fsynced and renamed over ``path``
(``os.replace`` is atomic on POSIX), so a reader sees the old file or the new one, never
half of one (the target's directory must exist: nothing is created for the caller); on any error the temporary file is removed and ``path`` is untouched (a
writer killed outright leaves its temporary: ``volume.runner.remove_stale_temporaries``
removes it on the next run). Files use HDF5's latest format (``libver="latest"``), whose
metadata (superblock, object headers, B-trees) carries checksums. The file gets the
permissions a plain ``open`` would give (0666 less the umask, usually 0644), so tables and
kernels can be shared and served.

Integrity of the content: :func:`checked_dataset` writes a dataset with HDF5's Fletcher-32
filter (a corrupt chunk fails to read), and :func:`content_digest` is a SHA-256 over the
content that the writer stores and the reader recomputes, so that a defect anywhere, also
in an attribute or an unfiltered byte, is an error rather than a different table.
"""

from __future__ import annotations

import hashlib
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
        with h5py.File(tmp, "w", libver="latest") as f:
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


def check_format(f: "h5py.File", path: str | Path, fmt: str, version: int | tuple[int, ...], what: str,  # noqa: F821
                 error: type) -> None:
    """Refuse a file whose ``format``/``format_version`` root attributes are not ours (``version``:
    the one version, or the versions, this library reads), raising ``error`` with a message
    that names the file."""
    if attr_text(f, "format") != fmt:
        raise error(f"{str(path)!r} is not a {what} (HDF5 attribute format != {fmt!r})")
    found = int(f.attrs.get("format_version", -1))
    versions = (version,) if isinstance(version, int) else tuple(version)
    if found not in versions:
        raise error(f"{str(path)!r} has {what} format version {found}; this library reads "
                    f"{' or '.join(map(str, versions))}")


def set_text_attrs(f: "h5py.File", **texts: str) -> None:  # noqa: F821
    """Store text attributes as fixed-length UTF-8 bytes: they live in the object header,
    which the latest format checksums (variable-length strings live in a global heap that
    has no checksum, where a flipped length makes HDF5 read for ever)."""
    import numpy as np

    for name, text in texts.items():
        f.attrs.create(name, np.bytes_(text.encode("utf-8")))


def attr_text(f: "h5py.File", name: str) -> str | None:  # noqa: F821
    """A text attribute as str (fixed-length bytes or variable-length string), None if absent."""
    value = f.attrs.get(name)
    if value is None:
        return None
    if hasattr(value, "tobytes") and not isinstance(value, (bytes, str)):
        value = value.tobytes() if getattr(value, "dtype", None) is not None and value.dtype.kind == "S" else value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def checked_dataset(f: "h5py.File", name: str, data, dtype, compress: bool = False) -> None:  # noqa: F821
    """A dataset protected by the Fletcher-32 checksum filter (chunked, as filters need;
    an empty array gets one chunk of one row); ``compress``: byte shuffle and gzip level 1
    (fast; any HDF5 reader decodes it)."""
    import numpy as np

    data = np.asarray(data, dtype=dtype)
    chunks = tuple(max(1, min(n, 1 << 16)) for n in data.shape) if data.ndim else None
    maxshape = tuple(None if i == 0 else n for i, n in enumerate(data.shape)) if data.ndim else None
    f.create_dataset(name, data=data, dtype=dtype, chunks=chunks, maxshape=maxshape, fletcher32=True,
                     compression="gzip" if compress else None, compression_opts=1 if compress else None,
                     shuffle=bool(compress))


def content_digest(*parts) -> str:
    """SHA-256 (hex) over ``parts`` (str, int or numpy arrays), each length-prefixed, arrays
    with their dtype and shape, so that different contents never give the same byte stream."""
    import numpy as np

    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):  # hashed in place: no copy of a table's gigabyte of keys
            head = f"{part.dtype.str}{part.shape}".encode()
            data = np.ascontiguousarray(part)
            h.update((len(head) + data.nbytes).to_bytes(8, "little"))
            h.update(head)
            h.update(memoryview(data.reshape(-1)).cast("B"))
        else:
            blob = str(part).encode()
            h.update(len(blob).to_bytes(8, "little"))
            h.update(blob)
    return h.hexdigest()
