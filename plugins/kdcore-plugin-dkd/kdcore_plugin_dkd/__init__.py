"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022) for kdcore."""

__version__ = "0.1.0"
