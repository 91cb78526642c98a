"""Bad input gets a one-line error naming the problem (exit status 2, no traceback), and
existing files are left exactly as they were."""

import hashlib
import shutil

import pytest

from volume.cli import main
from volume.runner import run_local


def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def setup(tmp_path, boolean_spec):
    spec_path = tmp_path / "tiny.toml"
    boolean_spec.save(spec_path)
    table = tmp_path / "tiny.h5"
    run_local(boolean_spec, 1024, table)
    return tmp_path, spec_path, table


def write(p, text):
    p.write_text(text)
    return p


CASES = {
    "unknown activation": (lambda d, s, t: ["sample", str(write(d / "a.toml", s.read_text().replace('"relu"', '"gelu"'))),
                                            "-n", "10", "-o", str(t)], "architecture.activation"),
    "negative sigma": (lambda d, s, t: ["sample", str(write(d / "b.toml", s.read_text().replace("sigma_w = 1.5", "sigma_w = -1.5"))),
                                        "-n", "10", "-o", str(t)], "prior.sigma_w"),
    "unknown field": (lambda d, s, t: ["sample", str(write(d / "c.toml", s.read_text() + "\n[extra]\nx = 1\n")),
                                       "-n", "10", "-o", str(t)], "extra"),
    "bad toml": (lambda d, s, t: ["sample", str(write(d / "d.toml", "[prior\n")), "-n", "10", "-o", str(t)], "TOML"),
    "missing spec": (lambda d, s, t: ["sample", str(d / "none.toml"), "-n", "10", "-o", str(t)], "does not exist"),
    "zero draws": (lambda d, s, t: ["sample", str(s), "-n", "0", "-o", str(t)], "positive integer"),
    "table of another spec": (lambda d, s, t: ["sample", str(write(d / "e.toml", s.read_text().replace("seed = 1", "seed = 2"))),
                                               "-n", "4096", "-o", str(t)], "holds spec"),
    "wrong-length function": (lambda d, s, t: ["prior", str(t), "0101"], "length 4"),
    "non-binary characters": (lambda d, s, t: ["prior", str(t), "0120xy01"], "not labels"),
    "corrupt table": (lambda d, s, t: ["info", str(write(d / "bad.h5", "garbage"))], "corrupt"),
    "truncated table": (lambda d, s, t: ["info", str(truncated(t, d))], "corrupt"),
    "missing table": (lambda d, s, t: ["info", str(d / "missing.h5")], "does not exist"),
    "missing data file": (lambda d, s, t: ["sample", str(write(d / "f.toml", MNIST_SPEC.format(path=d))), "-n", "10",
                                           "-o", str(d / "m.h5")], "t10k-images-idx3-ubyte"),
    "training index out of range": (lambda d, s, t: ["posterior", str(t), "--train", "0-9", "--labels", "0" * 10], "0..7"),
    "unknown target": (lambda d, s, t: ["posterior", str(t), "--train", "0-3", "--target", "ge5"], "unknown target rule"),
    "plot format": (lambda d, s, t: ["plot", str(t), "-o", str(d / "x.jpgx")], "unknown image format '.jpgx'"),
    "plot directory": (lambda d, s, t: ["plot", str(t), "-o", str(d / "no" / "x.png")], "does not exist; create it"),
    "table directory": (lambda d, s, t: ["sample", str(s), "-n", "10", "-o", str(d / "no" / "x.h5"), "--in-process"],
                        "does not exist; create it"),
    "kernel directory": (lambda d, s, t: ["gp", "kernel", str(s), "-o", str(d / "no" / "k.h5")], "does not exist"),
    "missing CUDA device": (lambda d, s, t: ["sample", str(s), "-n", "10", "-o", str(d / "c.h5"), "--in-process",
                                             "--device", "cuda:99"], "CUDA device(s)"),
    "unknown device": (lambda d, s, t: ["sample", str(s), "-n", "10", "-o", str(d / "c.h5"), "--device", "tpu"],
                       "device 'tpu' is unknown"),
    "sub-batch 0": (lambda d, s, t: ["sample", str(s), "-n", "10", "-o", str(d / "c.h5"), "--in-process",
                                     "--sub-batch", "0"], "positive integer"),
    "prior scale too large": (lambda d, s, t: ["gp", "logp", str(write(d / "g.toml", s.read_text().replace("sigma_w = 1.5", "sigma_w = 1e200"))),
                                               "--labels", "parity"], "prior.sigma_w' = 1e+200 is invalid: must be <= 1e+06"),
    "scale grows past float32": (lambda d, s, t: ["gp", "logp", str(write(d / "g.toml", s.read_text().replace("sigma_w = 1.5", "sigma_w = 1e6")
                                                                          .replace("hidden = [8]", "hidden = [" + ", ".join(["8"] * 6) + "]"))),
                                                  "--labels", "parity"], "with 7 layers, activations reach ~1e42"),
    "hex digits": (lambda d, s, t: ["prior", str(t), "0x0f0f"], "has 4 hex digits"),
}

MNIST_SPEC = """
[architecture]
hidden = [10]
[inputs]
kind = "image"
dataset = "mnist"
path = "{path}"
count = 10
"""


def truncated(table, d):
    p = d / "trunc.h5"
    data = table.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_clear_error_and_files_intact(setup, case, capsys):
    d, spec_path, table = setup
    before = sha(table)
    argv, expected = CASES[case][0](d, spec_path, table), CASES[case][1]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert last.startswith(f"volume {argv[0]}: error: ") and expected in last
    assert sha(table) == before
    assert not list(d.glob("*.tmp")) and not (d / "no").exists()


def test_closed_pipe_is_not_an_error(setup):
    """`volume info T --json | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    import subprocess
    import sys

    _, _, table = setup
    code = "import sys; from volume.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.Popen([sys.executable, "-c", code, "info", str(table), "--json", "--top", "500"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"{"
    p.stdout.close()  # as `head -1` does
    err = p.stderr.read().decode()
    assert p.wait() == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_flatness_measures_refuse_nan_parameters_and_report_non_convergence():
    import numpy as np
    import torch
    from scipy.sparse.linalg import aslinearoperator

    from volume.errors import VolumeError
    from volume.flatness.lanczos import lanczos_top, power_iteration
    from volume.flatness.local_energy import local_energy

    theta = torch.tensor([1.0, float("nan"), 2.0])
    with pytest.raises(VolumeError, match="1 non-finite entries"):
        local_energy(lambda t: torch.zeros(t.shape[0]), theta, [0.1], draws=4)
    nan_op = aslinearoperator(np.diag([1.0, np.nan, 2.0]))
    with pytest.raises(VolumeError, match="NaN or inf"):
        lanczos_top(nan_op, k=1)
    with pytest.raises(VolumeError, match="NaN or inf"):
        power_iteration(lambda v: v * float("nan"), 3)
    # +-1 eigenvalues of equal magnitude: power iteration never settles, and says so
    flip = lambda v: torch.tensor([1.0, -1.0], dtype=v.dtype) * v  # noqa: E731
    res = power_iteration(flip, 2, maxiter=20, tol=1e-12)
    assert not res.converged
    # ... and lambda_max refuses to return such a value
    from types import SimpleNamespace

    from volume.flatness.hessian import lambda_max

    op = SimpleNamespace(matvec=flip, size=2, objective=SimpleNamespace(dtype=torch.float64))
    with pytest.raises(VolumeError, match="did not converge"):
        lambda_max(op, method="power", maxiter=20)
    diag = SimpleNamespace(matvec=lambda v: torch.tensor([3.0, 1.0], dtype=v.dtype) * v, size=2,
                           objective=SimpleNamespace(dtype=torch.float64))
    assert lambda_max(diag, method="power", tol=1e-10) == pytest.approx(3.0, rel=1e-6)
