"""Channel-Wise Distillation (Shu et al., ICCV 2021) and pixel-wise KD for dense prediction."""

__version__ = "0.1.0"
