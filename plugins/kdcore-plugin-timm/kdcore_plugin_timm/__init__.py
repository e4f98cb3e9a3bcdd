"""timm's architectures as kdcore models."""

__version__ = "0.1.0"
