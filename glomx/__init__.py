"""glomx: globally sclerotic vs non-sclerotic glomeruli, reproducibly."""

__version__ = "0.1.0"
