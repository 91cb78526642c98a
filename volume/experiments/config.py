"""Configuration of the flatness-vs-volume experiment, read from TOML.

Layout (see examples/flatness_small.toml and examples/flatness.toml)::

    name = "flatness"
    [measures]                 # how each flatness measure is estimated
    [rescale]                  # alpha-rescaling applied to every minimum
    pool_losses = false        # also correlate over CE and MSE minima together (labelled 'ce+mse')
    [[systems]]                # one per data set: spec, target, split, attack sets, how the volume is found
    [[systems.runs]]           # optimizer settings; `repeats` trainings each

``threads`` (default 1) is the number of torch threads during the run: the networks are
small, so one thread avoids OpenMP synchronisation that costs more than it saves.

Attack sets (Zhang et al. 2021): a system with ``attack_sizes = [0, 50, 100]`` splits its
inputs into the training set S (``train_size``), the test set T (``test_size``, default all
inputs outside S and the largest attack set) and an attack pool (the rest); for each size a
the first a inputs of a seeded permutation of the pool (``attack_seed``) join the training set
with their target labels flipped, so the attack sets are nested. Test errors are on T only.

A system's ``volume`` lists the estimators of ln P(f) (:mod:`volume.experiments.volume_fn`);
with ``'nested'`` (the finite network's volume) the system's ``nested`` table sets fields of
:class:`volume.nested.NestedSettings`, e.g. ``nested = {particles = 40, replicas = 4}`` (default
:data:`volume.experiments.volumes.NESTED_SETTINGS`).

A system's ``spec`` is a path to a spec file (relative to the config file) or an inline
table; a relative ``inputs.path`` is taken relative to the config file too. Unknown or
invalid fields raise :class:`volume.errors.VolumeError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volume.checks import positive_int
from volume.errors import VolumeError
from volume.experiments.volume_fn import VOLUME_METHODS
from volume.spec import ExperimentSpec, Training



def _err(path: str, value: Any, fix: str) -> VolumeError:
    return VolumeError(f"experiment config field '{path}' = {value!r} is invalid: {fix}")


def _build(path: str, cls, d: Any):
    if not isinstance(d, dict):
        raise _err(path, d, "must be a table")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - allowed
    if unknown:
        raise VolumeError(f"unknown field(s) {', '.join(f'{path}.{u}' for u in sorted(unknown))}: "
                          f"allowed are {', '.join(sorted(allowed))}")
    try:
        return cls(**d)
    except TypeError as e:
        raise VolumeError(f"experiment config section '{path}': {e}") from None


def check_fields(d: dict, allowed, where: str = "experiment config", required=()) -> None:
    """A one-line error naming any field of ``d`` outside ``allowed`` or any ``required`` one missing."""
    unknown = set(d) - set(allowed)
    if unknown:
        raise VolumeError(f"unknown field(s) {sorted(unknown)} in {where}: allowed are {', '.join(sorted(allowed))}")
    for req in required:
        if req not in d:
            raise VolumeError(f"{where}: field '{req}' is required")


def _positive(path: str, v: Any, integer: bool = True) -> None:
    if integer:
        positive_int(v, f"experiment config field '{path}'")
    elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise _err(path, v, "must be a positive number")


def read_toml(path: str | Path, example: str) -> tuple[dict, Path]:
    """(the TOML of an experiment config, its directory); a one-line error if missing or invalid."""
    p = Path(path)
    if not p.is_file():
        raise VolumeError(f"experiment config {str(p)!r} does not exist: give a .toml file (see {example})")
    try:
        return tomllib.loads(p.read_text()), p.resolve().parent
    except tomllib.TOMLDecodeError as e:
        raise VolumeError(f"experiment config {str(p)!r} is not valid TOML: {e}") from None


class TomlConfig:
    """``load(path)``: an experiment config from its TOML file, relative paths taken from the
    file's directory (``read_toml``; ``EXAMPLE`` names example configs in its errors)."""

    EXAMPLE = "examples/"

    @classmethod
    def load(cls, path: str | Path):
        d, base = read_toml(path, cls.EXAMPLE)
        return cls.from_dict(d, base=base)


def load_spec(path: str, d: Any, base: Path) -> ExperimentSpec:
    """A config's spec: a spec file path (relative to the config) or an inline table; a relative
    ``inputs.path`` is taken relative to the config file; any ``training`` section is dropped."""
    if isinstance(d, str):
        spec = ExperimentSpec.load(base / d)  # a spec file resolves its own inputs.path
    elif isinstance(d, dict):
        spec = ExperimentSpec.from_dict(d).relative_to(base)
    else:
        raise _err(path, d, "a spec file path or an inline table")
    return spec.replace(training=None)


@dataclass(frozen=True)
class Measures:
    lanczos_tol: float = 1e-4
    hutchinson_samples: int = 50
    sharpness_eps: float = 1e-3  # Keskar et al.'s box eps(|theta| + 1)
    adaptive_eps: float = 1e-2  # adaptive box eps |theta|
    sharpness_steps: int = 20
    local_energy_sigmas: tuple[float, ...] = (0.05, 0.1, 0.2)
    local_energy_draws: int = 200

    def __post_init__(self) -> None:
        for name in ("lanczos_tol", "sharpness_eps", "adaptive_eps"):
            _positive(f"measures.{name}", getattr(self, name), integer=False)
        for name in ("hutchinson_samples", "sharpness_steps", "local_energy_draws"):
            _positive(f"measures.{name}", getattr(self, name))
        if self.hutchinson_samples < 2 or self.local_energy_draws < 2:
            raise _err("measures.hutchinson_samples/local_energy_draws", "<2", "need >= 2 for a standard error")
        s = tuple(float(x) for x in self.local_energy_sigmas)
        if not s or any(not math.isfinite(x) or x <= 0 for x in s):
            raise _err("measures.local_energy_sigmas", self.local_energy_sigmas, "a non-empty list of numbers > 0")
        object.__setattr__(self, "local_energy_sigmas", s)


@dataclass(frozen=True)
class Rescale:
    """Every minimum i is rescaled at hidden ``layer`` by alpha_i = exp(u), u ~ U(-ln a, ln a), a = alpha_max."""

    alpha_max: float = 10.0
    layer: int = 0
    seed: int = 1

    def __post_init__(self) -> None:
        _positive("rescale.alpha_max", self.alpha_max, integer=False)
        if self.alpha_max <= 1:
            raise _err("rescale.alpha_max", self.alpha_max, "must be > 1")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise _err("rescale.layer", self.layer, "a hidden layer index >= 0")


@dataclass(frozen=True)
class Run:
    """One optimizer setting: the optimizer fields of :class:`volume.spec.Training` (optimizer,
    lr, batch_size, loss, rho, momentum, max_epochs) and the number of trainings."""

    settings: Training
    repeats: int = 10

    @classmethod
    def from_dict(cls, path: str, d: Any) -> "Run":
        if not isinstance(d, dict):
            raise _err(path, d, "must be a table")
        d = dict(d)
        repeats = d.pop("repeats", 10)
        _positive(f"{path}.repeats", repeats)
        bad = set(d) & {"train_indices", "target"}
        if bad:
            raise VolumeError(f"{path}: {sorted(bad)} are set by the system (train_size, split_seed, target)")
        return cls(_build(path, Training, d), repeats)

    def training(self, train_indices, target: str) -> Training:
        return dataclasses.replace(self.settings, train_indices=tuple(train_indices), target=target)

    def __getattr__(self, name: str):
        if name == "settings":
            raise AttributeError(name)
        return getattr(self.settings, name)

    @property
    def label(self) -> str:
        s = self.settings
        extra = f",rho={s.rho:g}" if s.optimizer == "sam" else ""
        extra += f",momentum={s.momentum:g}" if s.momentum else ""
        return f"{s.optimizer}(lr={s.lr:g},bs={s.batch_size}{extra},{s.loss})"


@dataclass(frozen=True)
class System:
    name: str
    spec: ExperimentSpec
    target: str
    train_size: int
    split_seed: int = 0
    volume: tuple[str, ...] = ("table",)  # how log P(f) is found: "table", "gp", "auto" (volume_fn.py)
    prior_blocks: int = 16
    runs: tuple[Run, ...] = ()
    test_size: int | None = None  # default: every input outside S and the largest attack set
    attack_sizes: tuple[int, ...] = (0,)
    attack_seed: int = 0
    importance_samples: int = 0  # GP volume: importance-sampling correction with this many samples
    volume_train_test: bool = False  # also the GP ln P of the labels on S and T alone (log_prior_gp_st)
    nested: dict = field(default_factory=dict)  # NestedSettings fields for volume 'nested' (e.g. particles, replicas)

    @property
    def n_test(self) -> int:
        return self.test_size if self.test_size is not None else self.spec.n_inputs - self.train_size - max(self.attack_sizes)


@dataclass(frozen=True)
class FlatnessConfig(TomlConfig):
    EXAMPLE = "examples/flatness*.toml"

    name: str
    threads: int = 1  # torch threads while running: small networks are latency-bound
    measures: Measures = field(default_factory=Measures)
    rescale: Rescale = field(default_factory=Rescale)
    systems: tuple[System, ...] = ()
    pool_losses: bool = False  # also correlate CE and MSE minima together, labelled 'ce+mse'
    source: dict = field(default_factory=dict, compare=False)  # the config as read, for reports


    @classmethod
    def from_dict(cls, d: dict, base: Path = Path(".")) -> "FlatnessConfig":
        check_fields(d, {"name", "threads", "measures", "rescale", "systems", "pool_losses"})
        if not isinstance(d.get("pool_losses", False), bool):
            raise _err("pool_losses", d["pool_losses"], "true or false")
        _positive("threads", d.get("threads", 1))
        systems = d.get("systems", [])
        if not isinstance(systems, list) or not systems:
            raise _err("systems", systems, "give at least one [[systems]] table")
        return cls(name=str(d.get("name", "flatness")), threads=int(d.get("threads", 1)),
                   measures=_build("measures", Measures, d.get("measures", {})),
                   rescale=_build("rescale", Rescale, d.get("rescale", {})),
                   systems=tuple(_system(i, s, base) for i, s in enumerate(systems)),
                   pool_losses=bool(d.get("pool_losses", False)), source=d)


def _system(i: int, d: Any, base: Path) -> System:
    path = f"systems[{i}]"
    if not isinstance(d, dict):
        raise _err(path, d, "must be a table")
    allowed = {f.name for f in dataclasses.fields(System)}
    unknown = set(d) - allowed
    if unknown:
        raise VolumeError(f"unknown field(s) {sorted(unknown)} in {path}: allowed are {', '.join(sorted(allowed))}")
    for req in ("name", "spec", "target", "train_size"):
        if req not in d:
            raise _err(f"{path}.{req}", None, "is required")
    spec = load_spec(f"{path}.spec", d["spec"], base)
    _positive(f"{path}.train_size", d["train_size"])
    if d["train_size"] >= spec.n_inputs:
        raise _err(f"{path}.train_size", d["train_size"], f"must be < {spec.n_inputs} (the rest is the test set)")
    volume = d.get("volume", "table")
    volume = (volume,) if isinstance(volume, str) else volume
    if (not isinstance(volume, (list, tuple)) or not volume or len(set(volume)) != len(volume)
            or any(v not in VOLUME_METHODS for v in volume)):
        raise _err(f"{path}.volume", d.get("volume"), f"one or a list of {', '.join(VOLUME_METHODS)}")
    _positive(f"{path}.prior_blocks", d.get("prior_blocks", 16))
    attack = d.get("attack_sizes", [0])
    if (not isinstance(attack, list) or not attack or len(set(attack)) != len(attack)
            or any(isinstance(a, bool) or not isinstance(a, int) or a < 0 for a in attack)):
        raise _err(f"{path}.attack_sizes", attack, "a list of distinct integers >= 0, e.g. [0, 50, 100]")
    n_free = spec.n_inputs - d["train_size"] - max(attack)
    test_size = d.get("test_size")
    if test_size is not None:
        _positive(f"{path}.test_size", test_size)
    if (test_size if test_size is not None else n_free) > n_free or n_free < 1:
        raise _err(f"{path}.test_size" if test_size is not None else f"{path}.attack_sizes",
                   test_size if test_size is not None else attack,
                   f"train_size + test_size + max(attack_sizes) must be <= {spec.n_inputs} inputs with a test set left")
    if not isinstance(d.get("volume_train_test", False), bool):
        raise _err(f"{path}.volume_train_test", d["volume_train_test"], "true or false")
    imp = d.get("importance_samples", 0)
    if isinstance(imp, bool) or not isinstance(imp, int) or imp < 0:
        raise _err(f"{path}.importance_samples", imp, "an integer >= 0")
    nested = d.get("nested", {})
    if not isinstance(nested, dict):
        raise _err(f"{path}.nested", nested, "a table of nested-sampling settings, e.g. {particles = 40, replicas = 4}")
    from volume.experiments.volumes import NESTED_SETTINGS
    from volume.nested import NestedSettings

    # the settings the run will use (the experiments' defaults under the table's), checked now:
    # checked against the class defaults, p0 = 0.995 passed here and failed mid-run
    NestedSettings.from_mapping({**NESTED_SETTINGS, **nested}, where=f"{path}.nested.")
    runs = d.get("runs", [])
    if not isinstance(runs, list) or not runs:
        raise _err(f"{path}.runs", runs, "give at least one [[systems.runs]] table")
    return System(name=str(d["name"]), spec=spec, target=str(d["target"]), train_size=int(d["train_size"]),
                  split_seed=int(d.get("split_seed", 0)), volume=tuple(volume),
                  prior_blocks=int(d.get("prior_blocks", 16)), test_size=test_size,
                  attack_sizes=tuple(sorted(attack)), attack_seed=int(d.get("attack_seed", 0)),
                  importance_samples=imp, volume_train_test=bool(d.get("volume_train_test", False)),
                  nested=dict(nested),
                  runs=tuple(Run.from_dict(f"{path}.runs[{j}]", r) for j, r in enumerate(runs)))
