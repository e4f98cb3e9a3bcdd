"""Contract tests from kdcore.testing: they check what kdcore relies on (shapes, gradients,
determinism, clear errors) for two small timm architectures on Fashion-MNIST-sized inputs."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-timm"
    entry_point = "timm"
    components = {"model": ["timm"], "preset": ["timm"]}


class TestMobileNetContract(testing.ModelContract):
    component = "timm:timm"
    tests_to_skip = {"arch is required: there is no default timm model": ["test_builds_with_defaults"]}
    params = {"arch": "mobilenetv3_small_050"}
    module_paths = ["conv_stem", "blocks.1", "blocks.2", "global_pool", "classifier"]


class TestResNetContract(testing.ModelContract):
    component = "timm:timm"
    tests_to_skip = {"arch is required: there is no default timm model": ["test_builds_with_defaults"]}
    params = {"arch": "resnet10t"}
    module_paths = ["layer1", "layer2", "layer3", "layer4", "global_pool", "fc"]
