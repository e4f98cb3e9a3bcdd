"""Factor Transfer (Kim, Park, Kwak, NeurIPS 2018) for kdcore."""

__version__ = "0.1.0"
