import json

import pytest

from volume.spec import CNN, FCN, BooleanCube, ExperimentSpec, ImageSubset, Output, Prior, SpecError, Training


def test_example_spec_loads(tmp_path):
    from conftest import EXAMPLES

    spec = ExperimentSpec.load(EXAMPLES / "boolean7.toml")
    assert spec.architecture == FCN(hidden=(40, 40), activation="relu")
    assert spec.inputs == BooleanCube(n=7, encoding="01")
    assert spec.prior == Prior("gaussian", 1.0, 0.0)
    assert spec.n_inputs == 128


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_roundtrip(tmp_path, suffix):
    spec = ExperimentSpec(architecture=CNN(channels=(4, 8), kernel_size=5, pool="avg", dense=(16,), activation="tanh"),
                          prior=Prior("uniform", 2.0, 0.1), inputs=ImageSubset(path="/data", indices=(3, 1, 2)),
                          output=Output("argmax", 10), seed=7, block_size=100, name="x",
                          training=Training(optimizer="sam", lr=0.1, train_indices=(0, 1)))
    p = tmp_path / f"s{suffix}"
    spec.save(p)
    again = ExperimentSpec.load(p)
    assert again == spec and again.spec_id == spec.spec_id


def test_spec_id_is_stable_and_ignores_path_and_name():
    a = ExperimentSpec(inputs=ImageSubset(path="/a", count=10), architecture=FCN())
    b = ExperimentSpec(inputs=ImageSubset(path="/b", count=10), architecture=FCN(), name="other")
    assert a.spec_id == b.spec_id
    assert a.spec_id != a.replace(seed=1).spec_id
    # the id is the hash of the canonical JSON, so it never changes between versions or machines
    assert ExperimentSpec().spec_id == ExperimentSpec.from_json(ExperimentSpec().to_json()).spec_id
    assert json.loads(ExperimentSpec().canonical_json())["architecture"]["hidden"] == [40, 40]


@pytest.mark.parametrize("d,field", [
    ({"architecture": {"activation": "gelu"}}, "architecture.activation"),
    ({"prior": {"sigma_w": -1}}, "prior.sigma_w"),
    ({"prior": {"sigma_b": -0.1}}, "prior.sigma_b"),
    ({"prior": {"kind": "laplace"}}, "prior.kind"),
    ({"inputs": {"kind": "boolean", "n": 0}}, "inputs.n"),
    ({"inputs": {"kind": "boolean", "encoding": "xy"}}, "inputs.encoding"),
    ({"inputs": {"kind": "image", "dataset": "imagenet"}}, "inputs.dataset"),
    ({"output": {"kind": "threshold", "classes": 3}}, "output.classes"),
    ({"architecture": {"hidden": [40, 0]}}, "architecture.hidden[1]"),
    ({"architecture": {"kind": "rnn"}}, "architecture.kind"),
    ({"architecture": {"widths": [4]}}, "architecture.widths"),
    ({"block_size": 0}, "block_size"),
    ({"seeds": 3}, "seeds"),
    ({"architecture": {"kind": "cnn"}}, "architecture.kind"),
])
def test_invalid_specs_name_the_field(d, field):
    with pytest.raises(SpecError) as e:
        ExperimentSpec.from_dict(d)
    assert field in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        ExperimentSpec.load(tmp_path / "nope.toml")
    p = tmp_path / "bad.toml"
    p.write_text("[prior\nsigma_w=1")
    with pytest.raises(SpecError, match="not valid TOML"):
        ExperimentSpec.load(p)
