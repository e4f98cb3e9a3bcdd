"""Be Your Own Teacher (Zhang et al., ICCV 2019): self-distillation for kdcore."""

__version__ = "0.1.1"
