"""Entry-point module: registers the ``tensorboard`` logger (built on first use)."""

import kdcore


@kdcore.hookimpl
def kdcore_loggers():
    return [kdcore.Component("tensorboard", "kdcore_plugin_tensorboard.logger:TensorBoardLogger",
                             "TensorBoard event files in <run dir>/tensorboard (torch.utils.tensorboard)")]
