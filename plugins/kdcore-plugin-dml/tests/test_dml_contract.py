"""kdcore-plugin-dml against kdcore's contract kit (kdcore.testing)."""

import torch

from kdcore import testing
from kdcore.config import load_config

OWN_STEP = "DML owns its optimisation step (optimization_step, one optimizer per student); test_dml.py checks it"


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
    tests_to_skip = {OWN_STEP: ["test_training_step_terms", "test_step_changes_student",
                                "test_deterministic_with_seed"]}

    def exercise(self) -> None:
        """One own step, as the engine runs it (the kit's default calls training_step)."""
        parts = self.setup()
        algorithm = parts["algorithm"]
        optimizers = algorithm.optimizers(lambda groups: torch.optim.SGD(groups, lr=self.lr))

        def update(loss: torch.Tensor, name: str) -> bool:
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            return True

        algorithm.train()
        algorithm.optimization_step(self.first_batch(algorithm, parts["train"]), epoch=0, step=0, update=update)
