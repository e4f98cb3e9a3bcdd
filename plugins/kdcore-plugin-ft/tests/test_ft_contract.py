"""kdcore-plugin-ft against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-ft"
    entry_point = "ft"
    components = {"loss": ["ft"], "connector": ["paraphraser", "translator"]}


class TestFTContract(testing.LossContract):
    component = "ft:ft"
    student_shape = (8, 7, 7)  # the factors after translator / paraphraser


class TestParaphraserContract(testing.ConnectorContract):
    component = "ft:paraphraser"
    side = "teacher"
    in_shape = (16, 7, 7)
    out_shape = (8, 7, 7)
    expected_shape = (8, 7, 7)  # rate 0.5 of the teacher's channels
    bad_shapes = [((16,), (8,))]
    tests_to_skip = {"the teacher factor is a constant target: no autograd in main training":
                     ["test_gradient_flows"]}


class TestTranslatorContract(testing.ConnectorContract):
    component = "ft:translator"
    in_shape = (8, 7, 7)
    out_shape = (16, 7, 7)  # the teacher feature before the paraphraser
    expected_shape = (8, 7, 7)
    bad_shapes = [((8, 7, 7), (16, 14, 14))]
