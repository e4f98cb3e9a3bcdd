"""Entry-point module. The `kd` loss is the core's own since kdcore 0.1.7 (the default job runs
on the core alone); this plugin ships Hinton KD's preset and its method page."""

import kdcore


@kdcore.hookimpl
def kdcore_presets():
    return [kdcore.Preset("kd", "kdcore_plugin_kd:presets/fashion_mnist.yaml",
                          "Hinton KD on Fashion-MNIST: the default job (as preset teacher_student)")]
