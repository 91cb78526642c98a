"""Kernels on disk (HDF5, readable with plain h5py).

Root attributes: ``format="volume-gp-kernel"``, ``format_version``, ``spec`` (JSON), ``spec_id``,
``kernel`` ('analytic' | 'empirical'), ``meta`` (JSON: networks, block size, seed ...),
``library_version``. Datasets: ``K`` (float64, M x M) and, for an empirical kernel, ``stderr``
(float64, M x M). Written to a temporary file in the same directory and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from volume import __version__
from volume.errors import DataError
from volume.gp.kernels import KernelError
from volume.h5io import atomic_h5, check_format
from volume.spec import ExperimentSpec, SpecError

FORMAT = "volume-gp-kernel"
FORMAT_VERSION = 1


def save_kernel(path: str | Path, spec: ExperimentSpec, K: np.ndarray, meta: dict,
                stderr: np.ndarray | None = None) -> None:
    with atomic_h5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["spec"] = spec.to_json(indent=None)
        f.attrs["spec_id"] = spec.spec_id
        f.attrs["kernel"] = str(meta.get("kernel", ""))
        f.attrs["meta"] = json.dumps(meta, sort_keys=True)
        f.attrs["library_version"] = __version__
        f.create_dataset("K", data=np.asarray(K, dtype=np.float64))
        if stderr is not None:
            f.create_dataset("stderr", data=np.asarray(stderr, dtype=np.float64))


def load_kernel(path: str | Path, spec: ExperimentSpec | None = None) -> tuple[np.ndarray, dict, ExperimentSpec]:
    """(K, meta, spec) from a kernel file; with ``spec``, the file must be of that spec."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise DataError(f"kernel file {str(p)!r} does not exist: make it with `volume gp kernel SPEC -o FILE`")
    try:
        with h5py.File(p, "r") as f:
            check_format(f, p, FORMAT, FORMAT_VERSION, "kernel file", DataError)
            K = f["K"][...]
            meta = json.loads(f.attrs["meta"])
            file_spec = ExperimentSpec.from_json(f.attrs["spec"])
    except (DataError, SpecError):
        raise
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"cannot read kernel file {str(p)!r}: corrupt or truncated ({e})") from None
    if spec is not None and file_spec.spec_id != spec.spec_id:
        raise KernelError(f"kernel file {str(p)!r} was computed for spec {file_spec.spec_id}, not for this spec "
                          f"({spec.spec_id}): recompute it with `volume gp kernel SPEC -o FILE`")
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] != file_spec.n_inputs:
        raise KernelError(f"kernel file {str(p)!r} holds a {K.shape} matrix but its spec has "
                          f"{file_spec.n_inputs} inputs: the file is corrupt")
    return K, meta, file_spec
