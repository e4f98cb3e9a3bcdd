"""Hinton knowledge distillation for kdcore."""

__version__ = "0.1.0"
