"""kdcore-plugin-fitnet against kdcore's contract kit (kdcore.testing)."""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "kdcore-plugin-fitnet"
    entry_point = "fitnet"
    components = {"loss": ["fitnet"], "connector": ["conv_reg"]}


class TestFitNetContract(testing.LossContract):
    component = "fitnet:fitnet"
    student_shape = (16, 7, 7)  # the regressed hint, same shape as the teacher's guided feature
    stage_params = {"hint_epochs": 1}
    bad_shapes = [((16, 7, 7), (16, 14, 14))]


class TestConvRegContract(testing.ConnectorContract):
    component = "fitnet:conv_reg"
    in_shape = (8, 14, 14)
    out_shape = (16, 7, 7)  # halves the resolution with a stride-2 conv


class TestConvRegSameSizeContract(testing.ConnectorContract):
    component = "fitnet:conv_reg"
    params = {"relu": False}
    in_shape = (8, 7, 7)
    out_shape = (16, 7, 7)
    bad_shapes = [((8,), (16,))]  # needs feature maps
