"""Activation-boundary distillation (Heo, Lee, Yun, Choi, AAAI 2019) for kdcore."""

__version__ = "0.1.0"
