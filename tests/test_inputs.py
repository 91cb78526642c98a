import gzip
import itertools

import numpy as np
import pytest

from volume.errors import DataError, FunctionError
from volume.inputs import boolean_cube, load_inputs, read_idx, target_labels
from volume.spec import BooleanCube, ImageSubset


def test_boolean_cube_order_matches_itertools():
    for n in (1, 3, 5):
        expected = np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.float32)
        assert np.array_equal(boolean_cube(n), expected)
        assert np.array_equal(boolean_cube(n, "pm1"), 2 * expected - 1)


def test_boolean_targets():
    s = load_inputs(BooleanCube(n=3))
    assert target_labels(s, "parity").tolist() == [0, 1, 1, 0, 1, 0, 0, 1]
    assert target_labels(s, "majority").tolist() == [0, 0, 0, 1, 0, 1, 1, 1]
    assert target_labels(s, "bit:0").tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert target_labels(s, "bits:01010101").tolist() == [0, 1] * 4
    with pytest.raises(FunctionError, match="unknown target rule"):
        target_labels(s, "ge5")


def test_mnist_subset(mnist_dir):
    spec = ImageSubset(dataset="mnist", path=str(mnist_dir), split="test", count=100, subset_seed=3)
    s = load_inputs(spec)
    assert s.x.shape == (100, 1, 28, 28) and s.shape == (1, 28, 28)
    assert 0.0 <= s.x.min() and s.x.max() <= 1.0
    assert np.all(np.diff(s.indices) > 0)
    # independent read of the raw IDX file
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    assert np.allclose(s.x[:, 0] * 255, raw[s.indices])
    assert set(np.unique(target_labels(s, "ge5"))) <= {0, 1}
    assert np.array_equal(target_labels(s, "ge5"), (s.labels >= 5).astype(np.uint8))
    st = load_inputs(ImageSubset(path=str(mnist_dir), indices=(5, 0, 9), normalise="standard"))
    flat = st.flat
    assert np.allclose(flat.mean(1), 0, atol=1e-5) and np.allclose((flat ** 2).mean(1), 1, atol=1e-4)


def test_missing_and_corrupt_data(tmp_path, mnist_dir):
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_inputs(ImageSubset(path=str(tmp_path), count=10))
    with pytest.raises(DataError, match="inputs.path"):
        load_inputs(ImageSubset(path="", count=10))
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100)
    with pytest.raises(DataError, match="truncated"):
        read_idx(bad)
    with pytest.raises(DataError, match="has only"):
        load_inputs(ImageSubset(path=str(mnist_dir), count=20000))


def test_cifar10_python_batches(tmp_path):
    import pickle

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(20, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=20).tolist()
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f)
    s = load_inputs(ImageSubset(dataset="cifar10", path=str(tmp_path), split="test", indices=(4, 2)))
    assert s.x.shape == (2, 3, 32, 32)
    assert np.allclose(s.x[0] * 255, data[4].reshape(3, 32, 32))
    assert s.labels.tolist() == [labels[4], labels[2]]
    with pytest.raises(DataError, match="data_batch_1"):
        load_inputs(ImageSubset(dataset="cifar10", path=str(tmp_path), split="train", count=2))


def test_digits_builtin():
    s = load_inputs(ImageSubset(dataset="digits", count=50))
    assert s.x.shape == (50, 1, 8, 8) and s.labels.shape == (50,)


def test_cnn_and_fcn_sample_mnist(mnist_dir):
    from volume.sampler import Sampler
    from volume.spec import CNN, FCN, ExperimentSpec, Output, Prior

    inputs = ImageSubset(path=str(mnist_dir), count=20)
    for arch, out in ((CNN(channels=(4, 4), dense=(8,)), Output()), (FCN(hidden=(16,)), Output("argmax", 10))):
        spec = ExperimentSpec(architecture=arch, inputs=inputs, output=out, block_size=16, prior=Prior(sigma_b=0.1))
        lab = Sampler(spec, sub_batch=5).labels(0)
        assert lab.shape == (16, 20) and lab.max() < out.classes
        assert np.array_equal(lab, Sampler(spec, sub_batch=16).labels(0))
