"""The GP entry points: volume.gp.estimate.log_prior and `volume gp logp | kernel | posterior`."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from volume.cli import main
from volume.errors import VolumeError
from volume.gp.estimate import log_prior
from volume.gp.kernels import analytic_kernel
from volume.gp.store import load_kernel
from volume.spec import BooleanCube, ExperimentSpec, FCN, ImageSubset, Prior

from conftest import EXAMPLES


@pytest.fixture
def spec4(tmp_path):
    spec = ExperimentSpec(architecture=FCN(hidden=(32, 32)), prior=Prior(sigma_w=1.0, sigma_b=0.0),
                          inputs=BooleanCube(n=3), seed=0, name="b3")
    path = tmp_path / "b3.toml"
    spec.save(path)
    return spec, path


def test_log_prior_api_matches_brute_force_and_is_json(spec4):
    spec, _ = spec4
    labels = "00010111"  # majority of 3 bits; input 0 (all zeros) has label 0 as it must
    res = log_prior(spec, labels, importance_samples=20000, seed=1)
    K = analytic_kernel(spec)
    z = np.random.default_rng(0).multivariate_normal(np.zeros(8), K, size=200000)
    p = np.mean(np.all((z > 0).astype(int) == np.array([0, 0, 0, 1, 0, 1, 1, 1]), axis=1))
    assert res.n_inputs == 8 and res.n_deterministic == 1 and res.converged
    assert res.log_p == pytest.approx(math.log(p), abs=4 * res.is_stderr + 0.03)
    assert res.is_correction == pytest.approx(res.log_p - res.log_p_ep)
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["log_p"] == res.log_p and d["kernel"] == "analytic" and d["jitter"] == res.jitter
    # same function as a rule, as hex and as an array
    assert log_prior(spec, "majority").log_p_ep == pytest.approx(res.log_p_ep)
    assert log_prior(spec, "0x17").log_p_ep == pytest.approx(res.log_p_ep)
    assert log_prior(spec, np.array([0, 0, 0, 1, 0, 1, 1, 1])).log_p_ep == pytest.approx(res.log_p_ep)
    imp = log_prior(spec, "one")
    assert imp.impossible and imp.to_dict()["log_p"] is None
    json.dumps(imp.to_dict(), allow_nan=False)


def test_log_prior_empirical_kernel_and_mnist(mnist_dir):
    spec = ExperimentSpec(architecture=FCN(hidden=(64,)), prior=Prior(sigma_w=1.0, sigma_b=0.1),
                          inputs=ImageSubset(dataset="mnist", path=str(mnist_dir), count=40))
    a = log_prior(spec, "ge5")
    e = log_prior(spec, "ge5", kernel="empirical", kernel_samples=2048)
    assert a.converged and e.converged and a.n_inputs == 40
    assert e.kernel_meta["n_networks"] == 2048
    assert e.log_p_ep == pytest.approx(a.log_p_ep, rel=0.1)
    with pytest.raises(VolumeError, match="kernel_matrix"):
        log_prior(spec, "ge5", kernel_matrix=np.eye(39))


def test_cli_logp_kernel_posterior(spec4, tmp_path, capsys):
    spec, path = spec4
    assert main(["gp", "logp", str(path), "--labels", "majority", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_inputs"] == 8 and d["converged"]
    (tmp_path / "f.txt").write_text("00010111\n")
    assert main(["gp", "logp", str(path), "--labels", f"@{tmp_path / 'f.txt'}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["log_p"] == pytest.approx(d["log_p"])
    out = tmp_path / "K.h5"
    assert main(["gp", "kernel", str(path), "-o", str(out)]) == 0
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "volume-gp-kernel" and f.attrs["spec_id"] == spec.spec_id
        np.testing.assert_allclose(f["K"][...], analytic_kernel(spec))
    capsys.readouterr()
    assert main(["gp", "logp", str(path), "--labels", "majority", "--kernel-file", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["log_p"] == pytest.approx(d["log_p"])
    emp = tmp_path / "E.h5"
    assert main(["gp", "kernel", str(path), "-o", str(emp), "--kernel", "empirical", "--kernel-samples", "64"]) == 0
    K, meta, _ = load_kernel(emp, spec)
    assert meta["n_networks"] == 64 and K.shape == (8, 8)
    with h5py.File(emp, "r") as f:
        assert f["stderr"].shape == (8, 8)
    capsys.readouterr()
    assert main(["gp", "posterior", str(path), "--train", "0-4", "--target", "majority", "--json"]) == 0
    post = json.loads(capsys.readouterr().out)
    assert post["train_size"] == 5 and 0 <= post["expected_error"] <= 1 and 0 < post["pac_bayes_bound"] <= 1


def test_cli_bad_input_messages(spec4, tmp_path, capsys):
    spec, path = spec4
    for labels, msg in (("0101", "8 label"), ("0001011x", "not labels"), ("1111111", "length 7")):
        assert main(["gp", "logp", str(path), "--labels", labels]) == 2
        assert msg in capsys.readouterr().err
    other = spec.replace(prior=Prior(sigma_w=2.0, sigma_b=0.0))
    other_path = tmp_path / "other.toml"
    other.save(other_path)
    out = tmp_path / "K.h5"
    assert main(["gp", "kernel", str(other_path), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["gp", "logp", str(path), "--labels", "majority", "--kernel-file", str(out)]) == 2
    assert "was computed for spec" in capsys.readouterr().err
    assert main(["gp", "logp", str(path), "--labels", "majority", "--kernel-file", str(tmp_path / "no.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err
    b7 = EXAMPLES / "boolean7.toml"
    assert main(["gp", "logp", str(b7), "--labels", "parity", "--importance-samples", "-3"]) == 2
