"""Entry-point module: kept light, the kernel code is imported on first use."""

import kdcore


@kdcore.hookimpl
def kdcore_model_transforms():
    return [kdcore.Component(
        "fast_max_pool", "kdcore_plugin_cpu_speed.transform:FastMaxPool",
        "on the CPU, plain 2x2 nn.MaxPool2d layers run a C kernel (built at first use), else "
        "vectorised tensor ops; torch's outputs and gradients")]
