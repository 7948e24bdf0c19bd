"""A run's checkpoint: where it lives, where a resumed run starts, and writing it atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from manet import config as manet_config
from manet.errors import ManetError, flattened
from manet.safe_files import load_torch_file
from manet.train.config import TrainConfig
from manet.train.optimizer import restore_schedule


def checkpoint_dir(cfg: TrainConfig) -> Path:
    """The folder of run ``cfg.name``'s checkpoint (``last.pt``)."""
    root = Path(cfg.checkpoint_root) if cfg.checkpoint_root else manet_config.default_home() / "checkpoints"
    return root / cfg.name


def starting_point(cfg: TrainConfig, last: Path, resume: bool) -> tuple[int, dict[str, Any] | None]:
    """(finished epochs, checkpoint state) of the run to continue, or (0, None) for a new run."""
    if not resume:
        if last.exists():
            raise ManetError(f"a training run named '{cfg.name}' exists ({last}); add --resume or pick another --name")
        return 0, None
    if not last.exists():
        raise ManetError(f"no checkpoint to resume at {last}; start without --resume")
    fix = f"delete {last.parent} to train again, or train under another --name"
    state = load_torch_file(last, what="training checkpoint", fix=fix, error=ManetError)
    saved = state.get("config") if isinstance(state, dict) else None
    if not (isinstance(saved, dict) and isinstance(state.get("epoch"), int) and isinstance(state.get("manet", {}), dict)
            and all(isinstance(state.get(key), dict) for key in ("model", "optimizer"))):
        raise ManetError(f"{last} is not a manet training checkpoint (config, epoch, model and optimizer); {fix}")
    if (saved.get("backbone"), saved.get("saliency"), saved.get("text")) != (cfg.backbone, cfg.saliency, cfg.text):
        raise ManetError(
            f"checkpoint {last} is a {saved.get('backbone')} (saliency={saved.get('saliency')}, "
            f"text={saved.get('text')}), not a {cfg.backbone} (saliency={cfg.saliency}, text={cfg.text}); "
            f"resume with the same settings or train under another --name"
        )
    saved_head = state.get("manet", {}).get("head", "linear")  # checkpoints before --head trained linear
    if saved_head != cfg.head:
        raise ManetError(f"checkpoint {last} trained a {saved_head} head, not {cfg.head}; resume with "
                         f"--head {saved_head} or train under another --name")
    return int(state["epoch"]), state


def restore(state: dict[str, Any], net: Any, optimizer: Any, scheduler: Any, step: int) -> list[dict[str, Any]]:
    """Load checkpoint ``state`` into the network and optimizer, continue the LR schedule at
    ``step`` with this run's learning rates; returns the saved epochs' history."""
    base_lrs = list(scheduler.base_lrs)  # this run's; loading the optimizer brings the saved run's
    try:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # e.g. the training set's classes changed
        raise ManetError(f"the checkpoint does not fit this run's network ({flattened(exc)}); "
                         f"resume with the same training set and settings, or train under another --name") from None
    restore_schedule(optimizer, scheduler, base_lrs, step)
    return state.get("history", [])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` by way of a temporary file."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: an interrupt never leaves a half-written checkpoint
