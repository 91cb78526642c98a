"""The number of PyTorch threads, set for a piece of work and restored after it.

``with torch_threads(1): ...`` runs the block with one intra-op thread and gives the caller
back the count it had, also when the block raises. Measured here, one thread is as fast as two
for the small matrices of a sampling block or an EP step, and much faster on a busy machine.
Torch is imported when the context is entered, not when this module is.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Limit torch to ``n`` threads inside the block (``None``: leave it as it is)."""
    import torch

    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)
