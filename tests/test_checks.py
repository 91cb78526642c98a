"""The shared checks (volume.checks) and the torch thread-count context (volume.threads)."""

import json
import math

import numpy as np
import pytest

from volume.checks import json_safe, positive_int, training_indices
from volume.errors import VolumeError
from volume.spec import SpecError


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3", None, np.float64(2.0)])
def test_positive_int_refuses(bad):
    with pytest.raises(VolumeError, match=r"draws = .* is invalid: give a positive integer"):
        positive_int(bad, "draws")


def test_positive_int_accepts_and_minimum():
    assert positive_int(np.int64(5), "n") == 5 and type(positive_int(np.int64(5), "n")) is int
    assert positive_int(0, "seed", minimum=0) == 0
    with pytest.raises(SpecError, match="give an integer >= 2"):
        positive_int(1, "spec field 'output.classes'", 2, SpecError)


def test_training_indices():
    assert training_indices([3, 1], 4).tolist() == [3, 1]
    for bad, msg in (([], "empty"), ([4], r"0\.\.3"), ([-1], r"0\.\.3"), ([1, 1], "repeat"), ([0.5], "integers")):
        with pytest.raises(VolumeError, match=msg):
            training_indices(bad, 4)


def test_json_safe_is_strict_json():
    x = {"a": np.float32(1.5), "b": [math.nan, -math.inf, np.int64(3)], "c": np.array([[1.0, np.nan]]), 4: (True,)}
    out = json_safe(x)
    assert out == {"a": 1.5, "b": [None, None, 3], "c": [[1.0, None]], "4": [True]}
    json.dumps(out, allow_nan=False)  # raises on NaN/inf


def test_torch_threads_restores_even_on_error():
    import torch

    from volume.threads import torch_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
