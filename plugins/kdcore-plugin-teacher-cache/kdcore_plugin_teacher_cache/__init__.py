"""The teacher-output cache (offline distillation) for kdcore: ``trainer.teacher_cache: true``."""

from importlib.metadata import version

__version__ = version("kdcore-plugin-teacher-cache")  # pyproject.toml's, as installed
