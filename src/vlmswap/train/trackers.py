"""Experiment tracking, as Prismatic offers it (`trackers: [jsonl, wandb]`): the loss log
`loss.jsonl` is always written by the training loop itself; Weights & Biases and TensorBoard are
opt-in through the study config's `trackers:` list and imported only when chosen, so neither is a
dependency. wandb runs offline unless WANDB_MODE says otherwise (no network at run time; `wandb
sync` uploads later).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["TRACKERS", "Trackers", "TrackerError", "open_trackers"]

TRACKERS = ("jsonl", "wandb", "tensorboard")


class TrackerError(RuntimeError):
    """A chosen tracker that cannot start; the message says how to install it or drop it."""


@dataclass
class Trackers:
    """The optional trackers of one training run: `log` each step's record, `close` at the end."""

    backends: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def log(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        values = {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        for name, backend in zip(self.names, self.backends):
            if name == "wandb":
                backend.log({f"train/{k}": v for k, v in values.items()}, step=step)
            else:
                for key, value in values.items():
                    backend.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        for name, backend in zip(self.names, self.backends):
            backend.finish() if name == "wandb" else backend.close()


def _missing(name: str, package: str, config: str) -> TrackerError:
    return TrackerError(f"{config}: trackers lists {name!r}, but the {package!r} package is not installed; "
                        f"install it (.venv/bin/pip install {package}) or remove {name!r} from `trackers:`")


def open_trackers(names: list[str], run_dir: Path, run_name: str, settings: Mapping[str, Any],
                  config: str = "the study config") -> Trackers:
    """Start the chosen optional trackers, writing under `run_dir` (never the declared outputs)."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise TrackerError(f"{config}: unknown tracker(s) {unknown}; choose from {', '.join(TRACKERS)}")
    trackers = Trackers()
    for name in dict.fromkeys(names):
        if name == "jsonl":
            continue  # loss.jsonl: the training loop writes it always
        if name == "wandb":
            try:
                import wandb
            except ImportError:
                raise _missing(name, "wandb", config) from None
            (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
            backend = wandb.init(project=os.environ.get("WANDB_PROJECT", "vlmswap"), name=run_name,
                                 dir=str(run_dir), mode=os.environ.get("WANDB_MODE", "offline"),
                                 config=dict(settings))
        else:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise _missing(name, "tensorboard", config) from None
            backend = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        trackers.backends.append(backend)
        trackers.names.append(name)
    return trackers
