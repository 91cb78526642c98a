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


def test_cached_spec_ids_cannot_go_stale():
    """spec_id_under is computed once per spec object and stream; the cache is invisible to
    equality, hashing, copies and pickles, and a changed spec is a new object with its own id."""
    import copy
    import dataclasses
    import hashlib
    import pickle

    spec = ExperimentSpec.from_dict({"seed": 4, "architecture": {"kind": "fcn", "hidden": [3, 2]}})

    def fresh(s, stream):
        return hashlib.sha256(s.canonical_json(stream).encode()).hexdigest()[:16]

    for stream in (1, 2, 1, 2):
        assert spec.spec_id_under(stream) == fresh(spec, stream)
    assert spec.spec_id_under(1) != spec.spec_id_under(2)
    twin = ExperimentSpec.from_dict({"seed": 4, "architecture": {"kind": "fcn", "hidden": [3, 2]}})
    assert spec == twin and hash(spec) == hash(twin) and spec.to_dict() == twin.to_dict()
    assert "_ids" not in pickle.loads(pickle.dumps(spec)).__dict__ and "_ids" not in copy.copy(spec).__dict__
    assert pickle.loads(pickle.dumps(spec)).spec_id == spec.spec_id == copy.deepcopy(spec).spec_id
    other = spec.replace(seed=5)
    assert other.spec_id == fresh(other, 2) != spec.spec_id
    with pytest.raises(dataclasses.FrozenInstanceError):  # what the cache relies on, down to the sections
        spec.architecture.hidden = (4,)
    assert isinstance(spec.architecture.hidden, tuple)
