"""Objectness-scaled distillation with feature-map NMS (Mehta & Ozturk, 2018) for kdcore."""

__version__ = "0.1.0"
