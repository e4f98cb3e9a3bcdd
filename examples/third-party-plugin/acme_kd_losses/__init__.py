"""Acme's distillation losses for kdcore (an example of a plugin maintained outside kdcore)."""

__version__ = "0.1.0"
