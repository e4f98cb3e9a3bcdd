"""Entry-point module: registers the ``mlflow`` logger (built on first use)."""

import kdcore


@kdcore.hookimpl
def kdcore_loggers():
    return [kdcore.Component("mlflow", "kdcore_plugin_mlflow.logger:MlflowLogger",
                             "MLflow run per kdcore run; local store <output_dir>/mlruns, no server")]
