"""Checkpoints: written atomically; RUN/checkpoints/last.pt is always the newest complete one."""

import os

import torch

from hetrec_dist.errors import UserError


def _atomic_save(state, path):
    temporary = f"{path}.tmp{os.getpid()}"
    torch.save(state, temporary)
    os.replace(temporary, path)


def save_checkpoint(directory, state, epoch, keep_epoch_file):
    """Write state to last.pt, and to epoch_NNNN.pt when asked; a kill never leaves a partial file there."""
    os.makedirs(directory, exist_ok=True)
    if keep_epoch_file:
        _atomic_save(state, os.path.join(directory, f"epoch_{epoch:04d}.pt"))
    _atomic_save(state, os.path.join(directory, "last.pt"))


def last_checkpoint(run_dir):
    path = os.path.join(run_dir, "checkpoints", "last.pt")
    return path if os.path.isfile(path) else None


def load_checkpoint(path, map_location="cpu"):
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for damaged files
        raise UserError(f"{path}: not a readable checkpoint ({err})") from None
