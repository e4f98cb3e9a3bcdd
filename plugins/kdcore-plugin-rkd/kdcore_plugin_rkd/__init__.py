"""Relational knowledge distillation (Park et al., CVPR 2019) for kdcore."""

__version__ = "0.1.0"
