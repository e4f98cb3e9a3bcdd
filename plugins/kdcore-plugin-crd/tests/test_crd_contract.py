"""kdcore-plugin-crd against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-crd"
    entry_point = "crd"
    components = {"loss": ["crd", "crd_inbatch"]}


class TestCRDContract(testing.LossContract):
    component = "crd:crd"
    params = {"feat_dim": 16, "nce_k": 32}
    student_shape = (32,)
    teacher_shape = (96,)  # embedded separately on each side
    more_shapes = [((8, 7, 7), (16, 7, 7))]
    tests_to_skip = {"the memory banks move towards each batch's embeddings on every call":
                     ["test_repeated_call_same_value"]}


class TestCRDInBatchContract(testing.LossContract):
    component = "crd:crd_inbatch"
    params = {"feat_dim": 16}
    student_shape = (32,)
    teacher_shape = (96,)
    more_shapes = [((8, 7, 7), (16, 7, 7))]
