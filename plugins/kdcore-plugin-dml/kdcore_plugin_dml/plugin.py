"""Entry-point module: kept light, the algorithm is imported on first use."""

import os

import kdcore

PRESET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets", "fashion_mnist.yaml")  # --algo's default


@kdcore.hookimpl
def kdcore_algorithms():
    return [kdcore.Component(
        "dml", "kdcore_plugin_dml.algorithms:DeepMutualLearning",
        "Deep Mutual Learning: K students from scratch, updated in turns on CE + KL from their peers",
        presets={"default": PRESET})]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("dml", "kdcore_plugin_dml:presets/fashion_mnist.yaml",
                          "Deep Mutual Learning on Fashion-MNIST: two cnn_student, no teacher")]
