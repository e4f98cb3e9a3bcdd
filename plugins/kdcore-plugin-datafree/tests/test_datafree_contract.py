"""kdcore-plugin-datafree against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-datafree"
    entry_point = "datafree"
    components = {"algorithm": ["data_free"]}


class TestDataFreeContract(testing.AlgorithmContract):
    component = "datafree:data_free"
    # a few synthesis steps keep it fast; the contract is about the step, not image quality
    params = {"iterations": 2, "batches_per_epoch": 1, "pool_size": 1, "refresh_per_epoch": 1,
              "grid_path": None}
