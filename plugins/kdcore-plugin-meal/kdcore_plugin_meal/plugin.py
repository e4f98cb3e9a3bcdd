"""Entry-point module: kept light, the algorithm is imported on first use."""

import os

import kdcore

PRESET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets", "fashion_mnist.yaml")  # --algo's default


@kdcore.hookimpl
def kdcore_algorithms():
    return [kdcore.Component(
        "meal_v2", "kdcore_plugin_meal.algorithms:MealV2",
        "MEAL V2: KL to the teachers' mean softmax (no labels) + a logit discriminator",
        presets={"default": PRESET})]


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("meal", "kdcore_plugin_meal:presets/fashion_mnist.yaml",
                          "MEAL V2 on Fashion-MNIST: two teachers' averaged soft labels + a logit discriminator")]
