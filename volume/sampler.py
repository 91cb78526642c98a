"""Sampling blocks of prior draws and the functions they induce.

Block b of a spec is ``spec.block_size`` draws whose parameters come from a generator
seeded by ``block_seed(spec.seed, b)`` (numpy ``SeedSequence([seed, b])``), so the labels
of a block are a pure function of (spec, b): the same whatever sub-batch size evaluates
it, whichever worker runs it, however often it is retried. Blocks are evaluated in
sub-batches (to keep activations in cache) with one batched forward per sub-batch.
"""

from __future__ import annotations

import numpy as np
import torch

from volume.inputs import InputSet, load_inputs
from volume.keys import pack_labels
from volume.models import draw_params, forward, labels_from_outputs, layer_shapes
from volume.spec import ExperimentSpec

DEFAULT_SUB_BATCH = 256


def block_seed(seed: int, block: int) -> int:
    """64-bit seed of block ``block`` of a run with ``seed``."""
    if block < 0:
        raise ValueError(f"block id must be >= 0, got {block}")
    return int(np.random.SeedSequence([seed, block]).generate_state(1, dtype=np.uint64)[0])


def block_generator(seed: int, block: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(block_seed(seed, block))


class Sampler:
    """Evaluates blocks of one spec; holds the input set and layer shapes between blocks."""

    def __init__(self, spec: ExperimentSpec, inputs: InputSet | None = None, *,
                 sub_batch: int = DEFAULT_SUB_BATCH, device: str = "cpu"):
        if spec.training is not None:
            raise ValueError("this spec describes optimizer-found functions (spec.training); use volume.train")
        if sub_batch < 1:
            raise ValueError("sub_batch must be >= 1")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available; use device='cpu'")
        self.spec = spec
        self.inputs = inputs if inputs is not None else load_inputs(spec.inputs)
        self.layers = layer_shapes(spec, self.inputs.shape)
        self.sub_batch = sub_batch
        self.device = torch.device(device)
        self.x = torch.as_tensor(self.inputs.x, device=self.device)

    @property
    def n_inputs(self) -> int:
        return self.inputs.n_inputs

    def labels(self, block: int) -> np.ndarray:
        """Labels (block_size, M) uint8 of block ``block``."""
        spec = self.spec
        gen = block_generator(spec.seed, block)
        params = draw_params(spec, self.layers, spec.block_size, gen)
        out = np.empty((spec.block_size, self.n_inputs), dtype=np.uint8)
        with torch.no_grad():
            for start in range(0, spec.block_size, self.sub_batch):
                stop = min(start + self.sub_batch, spec.block_size)
                sub = {k: v[start:stop].to(self.device) for k, v in params.items()}
                z = forward(spec, self.layers, sub, self.x)
                out[start:stop] = labels_from_outputs(spec, z).cpu().numpy()
        return out

    def keys(self, block: int) -> np.ndarray:
        """Packed keys (block_size, key_bytes) of block ``block``."""
        return pack_labels(self.labels(block), self.spec.output.classes)


def sample_block(spec: ExperimentSpec, block: int, **kwargs) -> np.ndarray:
    """Labels of one block (convenience wrapper around :class:`Sampler`)."""
    return Sampler(spec, **kwargs).labels(block)
