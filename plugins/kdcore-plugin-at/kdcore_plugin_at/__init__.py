"""Attention Transfer (Zagoruyko & Komodakis, ICLR 2017) for kdcore."""

__version__ = "0.1.0"
