"""Entry-point module: kept light, the algorithm is imported on first use."""

import os

import kdcore

PRESET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets", "fashion_mnist.yaml")  # --algo's default


@kdcore.hookimpl
def kdcore_algorithms():
    return [kdcore.Component(
        "data_free", "kdcore_plugin_datafree.algorithms:DataFree",
        "DeepInversion: synthesise images from the teacher's BN statistics, then distil on them",
        presets={"default": PRESET})]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("datafree", "kdcore_plugin_datafree:presets/fashion_mnist.yaml",
                          "DeepInversion data-free distillation on Fashion-MNIST (no training images used)")]
