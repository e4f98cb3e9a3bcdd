"""MLflow tracking for kdcore runs."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-mlflow")  # pyproject.toml's, as installed
