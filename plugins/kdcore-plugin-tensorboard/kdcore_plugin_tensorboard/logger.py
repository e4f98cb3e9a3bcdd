"""The ``tensorboard`` logger: per-epoch scalars, the config and the summary as event files."""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from kdcore.errors import UserError
from kdcore.loggers import Logger, flat_metrics


def _code(text: str) -> str:
    """Text TensorBoard shows as written (its text panel renders Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


class TensorBoardLogger(Logger):
    """Writes to ``log_dir`` (default ``<run dir>/tensorboard``); step = epoch.

    :param log_dir: where the event files go; relative to the working directory.
    :param flush_secs: how often pending events reach the disk (they are also flushed after
        every epoch).
    """

    def __init__(self, run_dir: str, first_epoch: int = 1, log_dir: str | None = None,
                 flush_secs: int = 30) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("logger tensorboard needs the tensorboard package: pip install "
                            "tensorboard") from None
        # after --resume, events of the epochs written again replace the interrupted ones
        purge = first_epoch if first_epoch > 1 else None
        self.writer = SummaryWriter(log_dir or os.path.join(run_dir, "tensorboard"),
                                    purge_step=purge, flush_secs=flush_secs)

    def log_config(self, config: dict[str, Any]) -> None:
        self.writer.add_text("config", _code(yaml.safe_dump(config, sort_keys=False)), 0)

    def log_epoch(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        for name, value in flat_metrics(row).items():
            self.writer.add_scalar(name, value, step)
        for i, lr in enumerate(row.get("lr_groups", [])):
            self.writer.add_scalar(f"lr_groups/{i}", lr, step)
        self.writer.flush()

    def log_summary(self, summary: dict[str, Any]) -> None:
        step = int(summary.get("epochs", 0))
        self.writer.add_text("summary", _code(json.dumps(summary, indent=2)), step)
        for name, value in flat_metrics(summary).items():
            self.writer.add_scalar(f"summary/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
