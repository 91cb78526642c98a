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
    assert not list(d.glob("*.tmp"))
