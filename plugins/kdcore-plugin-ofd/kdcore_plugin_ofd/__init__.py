"""A Comprehensive Overhaul of Feature Distillation (Heo et al., ICCV 2019) for kdcore."""

__version__ = "0.1.0"
