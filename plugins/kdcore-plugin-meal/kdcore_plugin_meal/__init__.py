"""MEAL V2 (Shen & Savvides, 2020): ensemble distillation with a discriminator, for kdcore."""

__version__ = "0.1.0"
