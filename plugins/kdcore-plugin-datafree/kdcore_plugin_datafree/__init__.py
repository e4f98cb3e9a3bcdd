"""Data-free distillation by DeepInversion (Yin et al., CVPR 2020) for kdcore."""

__version__ = "0.1.1"
