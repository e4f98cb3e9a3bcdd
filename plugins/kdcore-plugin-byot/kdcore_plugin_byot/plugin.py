"""Entry-point module: kept light, the algorithm is imported on first use."""

import os

import kdcore

PRESET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets", "fashion_mnist.yaml")  # --algo's default


@kdcore.hookimpl
def kdcore_algorithms():
    return [kdcore.Component(
        "self_distillation", "kdcore_plugin_byot.algorithms:SelfDistillation",
        "BYOT: shallow exit classifiers learn from the network's own deepest output and feature",
        presets={"default": PRESET})]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("byot", "kdcore_plugin_byot:presets/fashion_mnist.yaml",
                          "Be Your Own Teacher on Fashion-MNIST: exits after stage1 and stage2, no teacher")]
