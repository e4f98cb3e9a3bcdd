"""Hinton knowledge distillation for kdcore."""

__version__ = "0.2.0"
