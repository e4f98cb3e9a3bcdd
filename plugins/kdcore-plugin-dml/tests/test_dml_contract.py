"""kdcore-plugin-dml against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing
from kdcore.config import load_config


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-dml"
    entry_point = "dml"
    components = {"algorithm": ["dml"]}


class TestDeepMutualLearningContract(testing.AlgorithmContract):
    component = "dml:dml"
    teachers = 0  # the students teach each other
    # the run passes its config: the peer is built from its student block
    context = {"config": load_config({"student": {"type": "cnn_student"}, "teachers": [],
                                      "algorithm": {"type": "dml"}})}
