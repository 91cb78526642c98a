"""volume: Monte-Carlo estimates of the prior over the functions that neural networks compute.

See README.md and DESIGN.md. The core (spec -> sampler -> keys -> table -> estimates,
gp, flatness) imports no Ray; ``volume.jobs`` and ``volume.service`` do.
"""

__version__ = "0.1.0"
