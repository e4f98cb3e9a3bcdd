"""Contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020) for kdcore."""

__version__ = "0.1.0"
