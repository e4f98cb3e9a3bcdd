"""Contract tests for kdcore plugins: subclass one class per component you ship.

Each class checks what the core relies on (shapes, gradients, frozen teachers, determinism,
clear errors) on tiny CPU inputs in seconds::

    from kdcore.testing import LossContract, PluginContract

    class TestPlugin(PluginContract):
        distribution = "acme-kd-losses"
        entry_point = "acme"
        components = {"loss": ["cosine_feature"]}

    class TestCosine(LossContract):
        component = "cosine_feature"
        student_shape = teacher_shape = (32,)

The classes are plain pytest classes (no fixtures, no conftest needed); ``tests_to_skip =
{"reason": ["test_name"]}`` opts out of single checks. See docs/plugins.md.
"""

from ._base import ContractBase, OptOut, seeded
from .algorithms import AlgorithmContract
from .connectors import ConnectorContract
from .e2e import default_job_differences, run_preset
from .heads import DistillerContract, HeadContract
from .install import install_dist_info
from .losses import LossContract
from .models import DatasetContract, ModelContract
from .plugin import PluginContract, isolated_plugins, using_plugins
from .tiny import FrozenSource, MeanSquared, random_split, tiny_cnn

__all__ = [
    "AlgorithmContract", "ConnectorContract", "ContractBase", "DatasetContract", "default_job_differences",
    "DistillerContract", "FrozenSource", "HeadContract", "LossContract", "MeanSquared",
    "ModelContract", "OptOut", "PluginContract", "install_dist_info", "isolated_plugins",
    "random_split", "run_preset", "seeded", "tiny_cnn", "using_plugins",
]
