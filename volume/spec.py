"""ExperimentSpec: everything that fixes the prior over functions, and its identity.

A spec names an architecture, a prior over its parameters, an input set, an output
rule, a seed and the number of draws in a block (the unit of randomness, work and
checkpointing, see DESIGN.md "Determinism"). Optionally it names a training
procedure: then the functions it describes are those an optimizer finds from prior
draws (P_opt(f)), not prior draws themselves.

Specs are frozen dataclasses validated on construction; an invalid field raises
:class:`SpecError` naming the field, the bad value and what is allowed. They load from
and save to JSON and TOML. ``spec_id`` is the first 16 hex digits of the SHA-256 of the
canonical JSON (sorted keys, no whitespace) of every field that changes the sampled
functions, together with the version of the random-stream layout; the location of an image data set on disk (``inputs.path``) is not one of
them, so the same experiment has the same id on every machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from volume.activations import ACTIVATIONS as _ACTIVATION_TABLE
from volume.checks import positive_int
from volume.errors import VolumeError

ACTIVATIONS = tuple(_ACTIVATION_TABLE)  # volume.activations is the one table
PRIORS = ("gaussian", "uniform")
ENCODINGS = ("01", "pm1")
DATASETS = ("mnist", "fashion-mnist", "cifar10", "digits")
SPLITS = ("train", "test")
NORMALISATIONS = ("unit", "standard", "none")
POOLS = ("max", "avg", "none")
OUTPUTS = ("threshold", "argmax")
OPTIMIZERS = ("sgd", "adam", "sam")
LOSSES = ("ce", "mse")


class SpecError(VolumeError):
    """An invalid spec: the message names the field, the value and the fix."""


def _fail(path: str, value: Any, allowed: str) -> None:
    raise SpecError(f"spec field '{path}' = {value!r} is invalid: {allowed}")


def _choice(path: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(path, value, "allowed values are " + ", ".join(repr(a) for a in allowed))


def _positive_int(path: str, value: Any, minimum: int = 1) -> None:
    positive_int(value, f"spec field '{path}'", minimum, SpecError)


MAX_PRIOR_SCALE = 1e6
"""Largest sigma_w / sigma_b: at 1e38 the samplers' float32 weights overflow to inf (torch and the
kernel disagreed on 77 of 200 keys), and the kernel's exact skipping of zero activations assumes
finite weights (inf x 0 is NaN)."""

MAX_SCALE_GROWTH = 30
"""Largest layers x log10(max(sigma_w, sigma_b, 1)): activations grow about as sigma^layers, and
float32 overflows at 3e38 (at sigma = 1e6 and 7 layers the compiled and torch samplers disagreed
on 127 of 200 keys); the margin of 8 decades covers input norms and widths."""


def _nonneg_float(path: str, value: Any, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(path, value, "must be a finite number")
    if value < 0 or (positive and value == 0):
        _fail(path, value, "must be > 0" if positive else "must be >= 0 (it is a standard deviation)")


def _int_tuple(path: str, value: Any, minimum: int = 1, allow_empty: bool = True) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        _fail(path, value, "must be a list of integers")
    for i, v in enumerate(value):
        _positive_int(f"{path}[{i}]", v, minimum)
    if not allow_empty and len(value) == 0:
        _fail(path, value, "must not be empty")
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class FCN:
    """Fully connected network: input -> hidden widths -> output layer."""

    hidden: tuple[int, ...] = (40, 40)
    activation: str = "relu"
    kind: str = "fcn"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", _int_tuple("architecture.hidden", self.hidden))
        _choice("architecture.activation", self.activation, ACTIVATIONS)


@dataclass(frozen=True)
class CNN:
    """Convolutional network: conv layers ('same' padding, stride 1, each followed by the
    activation and an optional 2x2 pooling), flattened, dense hidden layers, output layer."""

    channels: tuple[int, ...] = (8, 8)
    kernel_size: int = 3
    pool: str = "max"
    dense: tuple[int, ...] = ()
    activation: str = "relu"
    kind: str = "cnn"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", _int_tuple("architecture.channels", self.channels, allow_empty=False))
        object.__setattr__(self, "dense", _int_tuple("architecture.dense", self.dense))
        _positive_int("architecture.kernel_size", self.kernel_size)
        if self.kernel_size % 2 == 0:
            _fail("architecture.kernel_size", self.kernel_size, "must be odd ('same' padding)")
        _choice("architecture.pool", self.pool, POOLS)
        _choice("architecture.activation", self.activation, ACTIVATIONS)


Architecture = Union[FCN, CNN]


@dataclass(frozen=True)
class Prior:
    """Weights ~ N(0, sigma_w^2 / fan_in), biases ~ N(0, sigma_b^2); the uniform prior has
    the same variances: U(-a, a) with a = sigma * sqrt(3 / fan_in) (weights), sigma_b * sqrt(3)."""

    kind: str = "gaussian"
    sigma_w: float = 1.0
    sigma_b: float = 0.0

    def __post_init__(self) -> None:
        _choice("prior.kind", self.kind, PRIORS)
        _nonneg_float("prior.sigma_w", self.sigma_w, positive=True)
        _nonneg_float("prior.sigma_b", self.sigma_b)
        for name in ("sigma_w", "sigma_b"):  # float32 forward passes: weights must stay far from overflow
            if getattr(self, name) > MAX_PRIOR_SCALE:
                _fail(f"prior.{name}", getattr(self, name), f"must be <= {MAX_PRIOR_SCALE:g} (float32 activations "
                      "overflow near 3e38; for ReLU without biases the scale does not change the function)")
        object.__setattr__(self, "sigma_w", float(self.sigma_w))
        object.__setattr__(self, "sigma_b", float(self.sigma_b))


@dataclass(frozen=True)
class BooleanCube:
    """All 2^n inputs of n bits, input j = bits of j, most significant first; values in
    {0, 1} (encoding '01') or {-1, 1} (encoding 'pm1')."""

    n: int = 7
    encoding: str = "01"
    kind: str = "boolean"

    def __post_init__(self) -> None:
        _positive_int("inputs.n", self.n)
        if self.n > 20:
            _fail("inputs.n", self.n, "must be <= 20 (2^n inputs are evaluated per draw)")
        _choice("inputs.encoding", self.encoding, ENCODINGS)


@dataclass(frozen=True)
class ImageSubset:
    """A subset of an image data set read from a local directory (never downloaded).

    The subset is ``indices`` if given, else ``count`` images drawn without replacement
    with ``subset_seed`` (numpy ``default_rng``), kept in increasing index order.
    Normalisation: 'unit' scales pixels to [0, 1]; 'standard' centres each image and
    scales it to unit variance over its pixels (so x.x/d = 1); 'none' keeps raw 0..255. ``path`` is where the files are; it is not part of
    the spec's identity. 'digits' is scikit-learn's built-in 8x8 set and needs no path.
    """

    dataset: str = "mnist"
    path: str = ""
    split: str = "test"
    count: int | None = 1000
    indices: tuple[int, ...] | None = None
    subset_seed: int = 0
    normalise: str = "unit"
    kind: str = "image"

    def __post_init__(self) -> None:
        _choice("inputs.dataset", self.dataset, DATASETS)
        _choice("inputs.split", self.split, SPLITS)
        _choice("inputs.normalise", self.normalise, NORMALISATIONS)
        if self.indices is not None:
            idx = _int_tuple("inputs.indices", self.indices, minimum=0, allow_empty=False)
            if len(set(idx)) != len(idx):
                _fail("inputs.indices", "...", "must not repeat an index")
            object.__setattr__(self, "indices", idx)
            object.__setattr__(self, "count", None)
        elif self.count is None:
            _fail("inputs.count", None, "give inputs.count (a number of images) or inputs.indices")
        else:
            _positive_int("inputs.count", self.count)
        _positive_int("inputs.subset_seed", self.subset_seed, minimum=0)
        if not isinstance(self.path, str):
            _fail("inputs.path", self.path, "must be a directory path string")


InputSpec = Union[BooleanCube, ImageSubset]


@dataclass(frozen=True)
class Output:
    """'threshold': one output unit, label = 1[z > 0]; 'argmax': k output units, label = argmax."""

    kind: str = "threshold"
    classes: int = 2

    def __post_init__(self) -> None:
        _choice("output.kind", self.kind, OUTPUTS)
        _positive_int("output.classes", self.classes, minimum=2)
        if self.kind == "threshold" and self.classes != 2:
            _fail("output.classes", self.classes, "a 'threshold' output has 2 classes; use kind='argmax' for more")
        if self.classes > 256:
            _fail("output.classes", self.classes, "must be <= 256")

    @property
    def units(self) -> int:
        return 1 if self.kind == "threshold" else self.classes


@dataclass(frozen=True)
class Training:
    """How functions are found when the table holds optimizer-found functions (P_opt).

    Each draw is a prior initialisation trained on the training set (``train_indices``
    of the input set, labelled by the ``target`` rule, see ``volume.inputs.target_labels``)
    until zero training error or ``max_epochs``.
    """

    optimizer: str = "sgd"
    lr: float = 0.01
    batch_size: int = 32
    loss: str = "ce"
    rho: float = 0.05
    momentum: float = 0.0
    max_epochs: int = 1000
    train_indices: tuple[int, ...] = ()
    target: str = ""

    def __post_init__(self) -> None:
        _choice("training.optimizer", self.optimizer, OPTIMIZERS)
        _choice("training.loss", self.loss, LOSSES)
        _nonneg_float("training.lr", self.lr, positive=True)
        _nonneg_float("training.rho", self.rho)
        _nonneg_float("training.momentum", self.momentum)
        _positive_int("training.batch_size", self.batch_size)
        _positive_int("training.max_epochs", self.max_epochs)
        object.__setattr__(self, "train_indices", _int_tuple("training.train_indices", self.train_indices, minimum=0))
        if not isinstance(self.target, str):
            _fail("training.target", self.target, "must be a target rule string, e.g. 'parity'")


_ARCH = {"fcn": FCN, "cnn": CNN}
_INPUTS = {"boolean": BooleanCube, "image": ImageSubset}
# Version of the random stream: how block b's random numbers become parameters
# (volume.stream; DESIGN.md "Random stream"). It is part of every spec_id, so tables drawn
# under another stream have another id and can never be merged with, or extended by, new
# draws. 1: torch's CPU generator seeded per block, units of 32 draws (volume <= 0.1);
# 2: Philox4x32-10 counters per (draw, number group), Box-Muller; image inputs of a Gaussian
# FCN drawn in the basis of the input set (volume.basis).
RANDOM_STREAM_VERSION = 2

SECTIONS = ("architecture", "prior", "inputs", "output", "seed", "block_size", "training", "name")


@dataclass(frozen=True)
class ExperimentSpec:
    """The whole experiment: see the module docstring."""

    architecture: Architecture = field(default_factory=FCN)
    prior: Prior = field(default_factory=Prior)
    inputs: InputSpec = field(default_factory=BooleanCube)
    output: Output = field(default_factory=Output)
    seed: int = 0
    block_size: int = 4096
    training: Training | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, (FCN, CNN)):
            _fail("architecture", self.architecture, "must be an FCN or CNN")
        if not isinstance(self.prior, Prior):
            _fail("prior", self.prior, "must be a Prior")
        if not isinstance(self.inputs, (BooleanCube, ImageSubset)):
            _fail("inputs", self.inputs, "must be a BooleanCube or ImageSubset")
        if not isinstance(self.output, Output):
            _fail("output", self.output, "must be an Output")
        _positive_int("seed", self.seed, minimum=0)
        _positive_int("block_size", self.block_size)
        if isinstance(self.architecture, CNN) and not isinstance(self.inputs, ImageSubset):
            _fail("architecture.kind", "cnn", "a CNN needs an image input set (inputs.kind = 'image')")
        a, p = self.architecture, self.prior
        layers = len(a.hidden) + 1 if isinstance(a, FCN) else len(a.channels) + len(a.dense) + 1
        growth = layers * math.log10(max(p.sigma_w, p.sigma_b, 1.0))  # activations grow ~ sigma^layers
        if growth > MAX_SCALE_GROWTH:
            _fail("prior.sigma_w" if p.sigma_w >= p.sigma_b else "prior.sigma_b", max(p.sigma_w, p.sigma_b),
                  f"with {layers} layers, activations reach ~1e{growth:.0f}, past float32's 3e38: keep layers x "
                  f"log10(max(sigma_w, sigma_b)) <= {MAX_SCALE_GROWTH}")

    # ---- identity -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), the form written to JSON/TOML."""
        return _plain(dataclasses.asdict(self))

    def identity_dict(self, random_stream: int = RANDOM_STREAM_VERSION) -> dict[str, Any]:
        """The fields that change the sampled functions (no data path, no name)."""
        d = self.to_dict()
        d.pop("name", None)
        d["inputs"].pop("path", None)
        if d.get("training") is None:
            d.pop("training", None)
        d["random_stream"] = random_stream
        return d

    def canonical_json(self, random_stream: int = RANDOM_STREAM_VERSION) -> str:
        return json.dumps(self.identity_dict(random_stream), sort_keys=True, separators=(",", ":"))

    @property
    def spec_id(self) -> str:
        return self.spec_id_under(RANDOM_STREAM_VERSION)

    def spec_id_under(self, random_stream: int) -> str:
        """The id this spec has (had) under random-stream version ``random_stream``. Computed once
        per spec object and stream (about 30 us, a table merge's largest cost when its tables hold
        equal but distinct spec objects, as tables from workers do): a spec and its sections are
        frozen, with tuples for lists, so the cached id cannot go stale; copies and pickles
        (:meth:`__getstate__`) leave the cache behind and compute their own."""
        ids = self.__dict__.get("_ids")
        if ids is None:
            ids = {}
            object.__setattr__(self, "_ids", ids)
        sid = ids.get(random_stream)
        if sid is None:
            sid = ids[random_stream] = hashlib.sha256(self.canonical_json(random_stream).encode()).hexdigest()[:16]
        return sid

    def __getstate__(self) -> dict[str, Any]:
        """The fields only (the cached ids stay with this object)."""
        return {k: v for k, v in self.__dict__.items() if k != "_ids"}

    @property
    def n_inputs(self) -> int:
        """Number of inputs M in the input set (labels per function)."""
        if isinstance(self.inputs, BooleanCube):
            return 2 ** self.inputs.n
        return len(self.inputs.indices) if self.inputs.indices is not None else int(self.inputs.count)

    def replace(self, **changes: Any) -> "ExperimentSpec":
        return dataclasses.replace(self, **changes)

    # ---- reading and writing -------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentSpec":
        if not isinstance(d, dict):
            raise SpecError("a spec must be a mapping with sections " + ", ".join(SECTIONS))
        unknown = set(d) - set(SECTIONS)
        if unknown:
            raise SpecError(f"unknown spec field(s) {sorted(unknown)}: allowed top-level fields are {', '.join(SECTIONS)}")
        kw: dict[str, Any] = {}
        if "architecture" in d:
            kw["architecture"] = _section("architecture", d["architecture"], _ARCH, default="fcn")
        if "prior" in d:
            kw["prior"] = _build("prior", Prior, d["prior"])
        if "inputs" in d:
            kw["inputs"] = _section("inputs", d["inputs"], _INPUTS, default="boolean")
        if "output" in d:
            kw["output"] = _build("output", Output, d["output"])
        if d.get("training") is not None:
            kw["training"] = _build("training", Training, d["training"])
        for k in ("seed", "block_size", "name"):
            if k in d:
                kw[k] = d[k]
        if "name" in kw and not isinstance(kw["name"], str):
            _fail("name", kw["name"], "must be a string")
        return cls(**kw)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ExperimentSpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def to_toml(self) -> str:
        return _dump_toml(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> "ExperimentSpec":
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"spec is not valid TOML: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentSpec":
        """Read a spec from a .toml or .json file. A relative ``inputs.path`` is taken relative
        to the spec file's directory (not the current one) and made absolute, so a spec works
        from any working directory; the path is not part of ``spec_id``."""
        p = Path(path)
        if not p.is_file():
            raise SpecError(f"spec file {str(p)!r} does not exist: give the path of a .toml or .json spec (see examples/)")
        text = p.read_text()
        if p.suffix.lower() == ".json":
            spec = cls.from_json(text)
        elif p.suffix.lower() == ".toml":
            spec = cls.from_toml(text)
        else:
            raise SpecError(f"spec file {str(p)!r}: unknown extension; use .toml or .json")
        return spec.relative_to(p.parent)

    def relative_to(self, base: str | Path) -> "ExperimentSpec":
        """This spec with a relative ``inputs.path`` resolved against the directory ``base``."""
        inputs = self.inputs
        if not isinstance(inputs, ImageSubset) or not inputs.path or Path(inputs.path).expanduser().is_absolute():
            return self
        resolved = (Path(base) / inputs.path).resolve()
        return self.replace(inputs=dataclasses.replace(inputs, path=str(resolved)))

    def save(self, path: str | Path) -> None:
        p = Path(path)
        text = self.to_json() if p.suffix.lower() == ".json" else self.to_toml()
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(p)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _build(name: str, cls: type, d: Any) -> Any:
    if not isinstance(d, dict):
        raise SpecError(f"spec section '{name}' must be a table/mapping, got {d!r}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - allowed
    if unknown:
        raise SpecError(
            f"unknown field(s) {', '.join(f'{name}.{u}' for u in sorted(unknown))}: "
            f"allowed fields of '{name}' are {', '.join(sorted(allowed))}"
        )
    try:
        return cls(**d)
    except TypeError as e:
        raise SpecError(f"spec section '{name}': {e}") from None


def _section(name: str, d: Any, kinds: dict[str, type], default: str) -> Any:
    if not isinstance(d, dict):
        raise SpecError(f"spec section '{name}' must be a table/mapping, got {d!r}")
    kind = d.get("kind", default)
    if kind not in kinds:
        _fail(f"{name}.kind", kind, "allowed values are " + ", ".join(repr(k) for k in kinds))
    return _build(name, kinds[kind], {**d, "kind": kind})


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def _dump_toml(d: dict[str, Any]) -> str:
    """Minimal TOML writer for a spec: top-level scalars, then one [table] per section.
    None values are omitted (TOML has no null; absent means the default)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if vv is not None]
    return "\n".join(lines) + "\n"
