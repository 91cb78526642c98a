"""Experiments that combine the core pieces; each has a config dataclass and a ``run``."""
