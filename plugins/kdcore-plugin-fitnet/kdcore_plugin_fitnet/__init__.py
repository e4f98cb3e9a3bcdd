"""FitNets hints (Romero et al., ICLR 2015) for kdcore."""

__version__ = "0.1.0"
