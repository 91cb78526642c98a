"""Checks on the real MNIST test set, run where it is present (conftest.py: deselected with a
NOTICE in the summary where it is not). The values are facts of the published data set."""

import numpy as np

from volume.inputs import load_inputs, read_idx
from volume.spec import ImageSubset

# LeCun et al.'s MNIST test set: 10,000 images, label counts of digits 0..9, the first label
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_test_split(real_mnist_dir):
    images = read_idx(real_mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(real_mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TEST_LABEL_COUNTS
    assert labels[0] == 7
    s = load_inputs(ImageSubset(dataset="mnist", path=str(real_mnist_dir), split="test", count=1000, subset_seed=0))
    assert s.x.shape == (1000, 1, 28, 28) and np.array_equal(s.labels, labels[s.indices])
    assert np.allclose(s.x[:, 0] * 255, images[s.indices])
