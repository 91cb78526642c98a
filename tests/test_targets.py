"""One resolver of labels and targets (volume.inputs.resolve_labels) behind every entry point,
with messages that name the problem."""

import numpy as np
import pytest

from volume.cli import main
from volume.parsing import resolve_target
from volume.errors import FunctionError
from volume.gp.estimate import resolve_labels as gp_resolve
from volume.inputs import load_inputs, resolve_labels, target_labels
from volume.runner import run_local
from volume.spec import BooleanCube, ExperimentSpec, FCN, ImageSubset

CUBE3 = load_inputs(BooleanCube(n=3))
# input j = bits of j, most significant first: 000 001 010 011 100 101 110 111
BY_HAND = {
    "parity": [0, 1, 1, 0, 1, 0, 0, 1],
    "majority": [0, 0, 0, 1, 0, 1, 1, 1],
    "bit:0": [0, 0, 0, 0, 1, 1, 1, 1],
    "bit:2": [0, 1, 0, 1, 0, 1, 0, 1],
    "one": [1] * 8,
    "bits:00010111": [0, 0, 0, 1, 0, 1, 1, 1],
    "00010111": [0, 0, 0, 1, 0, 1, 1, 1],
    "0x17": [0, 0, 0, 1, 0, 1, 1, 1],
    "hex:17": [0, 0, 0, 1, 0, 1, 1, 1],
    "17": [0, 0, 0, 1, 0, 1, 1, 1],  # hex digits without the prefix (not a label string of length 8)
}


@pytest.mark.parametrize("value", sorted(BY_HAND))
def test_every_entry_point_resolves_the_same(value, tmp_path, boolean_spec):
    spec = boolean_spec  # n = 3
    table = run_local(spec, 512)
    expected = BY_HAND[value]
    assert resolve_labels(value, CUBE3).tolist() == expected
    assert resolve_labels(value, spec).tolist() == expected  # spec: inputs loaded only for rules
    assert target_labels(CUBE3, value).tolist() == expected
    assert gp_resolve(value, CUBE3).tolist() == expected
    assert resolve_target(table, value).tolist() == expected
    f = tmp_path / "t.txt"
    f.write_text(value + "\n")
    assert resolve_labels(f"@{f}", CUBE3, allow_file=True).tolist() == expected


def test_messages_name_the_problem():
    with pytest.raises(FunctionError, match=r"'ge5' is a rule for image inputs\): give a rule \(parity"):
        resolve_labels("ge5", CUBE3)
    cube7 = load_inputs(BooleanCube(n=7))
    with pytest.raises(FunctionError, match=r"'bit:9' is out of range: the inputs have 7 bits, use bit:0 .* bit:6"):
        resolve_labels("bit:9", cube7)
    with pytest.raises(FunctionError, match=r"has 4 hex digits: .* exactly 32 hex digits"):
        resolve_labels("0x7fff", cube7)
    with pytest.raises(FunctionError, match="read only on the command line"):
        resolve_labels("@/etc/hostname", CUBE3)  # the service never reads files
    with pytest.raises(FunctionError, match="does not exist"):
        resolve_labels("@/nonexistent/labels.txt", CUBE3, allow_file=True)


def test_image_rules_and_vector(tmp_path):
    digits = load_inputs(ImageSubset(dataset="digits", count=30))
    assert np.array_equal(resolve_labels("ge5", digits), (digits.labels >= 5).astype(np.uint8))
    assert np.array_equal(resolve_labels("class:3", digits), (digits.labels == 3).astype(np.uint8))
    with pytest.raises(FunctionError, match="'parity' is a rule for Boolean inputs"):
        resolve_labels("parity", digits)
    vec = np.arange(30) % 2
    assert np.array_equal(resolve_labels(vec, digits), vec)


def test_function_strings_need_no_data_files(tmp_path):
    # a spec whose image files are absent: a function string resolves, a rule says what is missing
    spec = ExperimentSpec(architecture=FCN(hidden=(4,)),
                          inputs=ImageSubset(dataset="mnist", path=str(tmp_path), count=4))
    assert resolve_labels("0110", spec).tolist() == [0, 1, 1, 0]
    with pytest.raises(Exception, match="t10k-images-idx3-ubyte"):
        resolve_labels("ge5", spec)


def test_cli_posterior_takes_target_file(tmp_path, boolean_spec, capsys):
    table = tmp_path / "t.h5"
    run_local(boolean_spec, 1024, table)
    f = tmp_path / "target.txt"
    f.write_text("majority\n")
    assert main(["posterior", str(table), "--train", "0-3", "--target", f"@{f}", "--json"]) == 0
    by_file = capsys.readouterr().out
    assert main(["posterior", str(table), "--train", "0-3", "--target", "majority", "--json"]) == 0
    assert capsys.readouterr().out == by_file
