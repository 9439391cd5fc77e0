"""Checkpoints: one format, whatever the number of ranks.

RUN/checkpoints/last.pt is the newest complete checkpoint (written atomically by rank 0 after every epoch),
and epoch_NNNN.pt are kept every checkpoint_every epochs. A checkpoint is the Trainer's state_dict(): the
model, both optimizers' state, the epoch and step, and the settings. Every rank holds the same dense
parameters and optimizer state (data parallelism without sharding), so rank 0's copy is the whole state.

Runs trained on several ranks by hetrec 0.1 have DeepSpeed engine folders instead (epoch_NNNN/ with
mp_rank_00_model_states.pt, named by the file `latest`); they still load, and their next checkpoint is a
last.pt.
"""

import dataclasses
import glob
import os

import torch

from hetrec_dist.data.atomic_files import remove_temporaries, write_atomically
from hetrec_dist.data.run_folder import RunFolder
from hetrec_dist.data.safe_pickle import refusal
from hetrec_dist.errors import UserError
from hetrec_dist.model.hetvae import ModelShape

LAST = "last.pt"


def _atomic_save(state, path):
    write_atomically(path, lambda temporary: torch.save(state, temporary))


class Checkpointer:
    """Writes a run's checkpoints: on rank 0 of `world` only, then every rank waits for it to finish."""

    def __init__(self, run_dir, world):
        self.directory, self.world = RunFolder(run_dir).checkpoints, world

    def remove_temporaries(self) -> list:
        """What killed writes left in checkpoints/ (call it on rank 0, holding the run's lock)."""
        return remove_temporaries(self.directory) if os.path.isdir(self.directory) else []

    def save(self, state_dict, epoch, keep_epoch_file):
        """state_dict(): called on rank 0 only. last.pt, and epoch_NNNN.pt when keep_epoch_file; a kill never
        leaves a partial file under either name."""
        if self.world.is_root:
            os.makedirs(self.directory, exist_ok=True)
            state = state_dict()
            if keep_epoch_file:
                _atomic_save(state, os.path.join(self.directory, f"epoch_{epoch:04d}.pt"))
            _atomic_save(state, os.path.join(self.directory, LAST))
        self.world.barrier()


# hetrec 0.1's several-rank format: DeepSpeed's engine checkpoint with hetrec's state as client state
LEGACY_LATEST = "latest"
LEGACY_STATES = "mp_rank_00_model_states.pt"
LEGACY_HETREC_STATE = "hetrec"


def last_checkpoint(run_dir):
    """The newest complete checkpoint of a run: last.pt, or the folder a hetrec 0.1 several-rank run's
    `latest` names; None if there is neither."""
    directory = RunFolder(run_dir).checkpoints
    if os.path.isfile(os.path.join(directory, LAST)):
        return os.path.join(directory, LAST)
    latest = os.path.join(directory, LEGACY_LATEST)
    if os.path.isfile(latest):
        with open(latest) as f:
            return os.path.join(directory, f.read().strip())
    return None


def _from_legacy(saved):
    state = saved[LEGACY_HETREC_STATE]
    return {**state, "model": {**saved["module"], **state["model"]}, "dense_optimizer": saved["optimizer"]}


def _earlier_checkpoint_hint(path):
    """For an unreadable last.pt: the newest epoch file beside it, which --checkpoint can name."""
    if os.path.basename(path) != LAST:
        return ""
    directory = os.path.dirname(path)
    kept = sorted(glob.glob(os.path.join(glob.escape(directory), "epoch_[0-9][0-9][0-9][0-9].pt")))
    if not kept:
        return ""
    return (f"; the newest epoch checkpoint beside it is {kept[-1]}: give it with --checkpoint (to continue: "
            "`hetrec train … --resume --checkpoint` it)")


def load_checkpoint(path, map_location="cpu"):
    """A checkpoint as a dict (model, model_shape, optimizers, epoch, ...): a .pt file, or a hetrec 0.1
    several-rank tag folder. Read with torch.load(weights_only=True): tensors and plain containers only, never
    code. UserError (one line) for a file that needs more, a damaged file, or a torch file that is not a hetrec
    checkpoint (cryoDRGN's weights.pkl, say)."""
    legacy = os.path.isdir(path)
    try:
        saved = torch.load(os.path.join(path, LEGACY_STATES) if legacy else path, map_location=map_location,
                           weights_only=True)
    except Exception as err:  # torch raises many types for damaged or refused files
        raise UserError(refusal(path, err, "checkpoint") + _earlier_checkpoint_hint(path)) from None
    state = saved.get(LEGACY_HETREC_STATE) if legacy and isinstance(saved, dict) else saved
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict) and "model_shape" in state):
        held = f"a dict of {', '.join(map(str, list(state)[:4]))}" if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path}: not a hetrec checkpoint (a torch file holding {held}, without hetrec's model "
                        "and model_shape); give a RUN/checkpoints/*.pt file that `hetrec train` wrote")
    state = _from_legacy(saved) if legacy else saved
    _check_structure(state, path)
    return state


def _check_structure(state, path):
    """A UserError (one line) where a checkpoint's model_shape, epoch, step or model are not what hetrec writes:
    what every reader relies on before it builds a model from them."""
    def refuse(what):
        raise UserError(f"{path}: not a hetrec checkpoint that can be used: {what}")

    shape = state["model_shape"]
    if not isinstance(shape, dict):
        refuse(f"model_shape is a {type(shape).__name__}, not a dict")
    for field in dataclasses.fields(ModelShape):
        value = shape.get(field.name)
        if value is None and field.default is dataclasses.MISSING:
            refuse(f"model_shape has no {field.name}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            refuse(f"model_shape's {field.name} is {value!r}, not a positive number")
    for name in ("epoch", "step"):
        if isinstance(state.get(name), bool) or not isinstance(state.get(name), int) or state[name] < 0:
            refuse(f"its {name} is {state.get(name)!r}, not a count")
    if not all(isinstance(value, torch.Tensor) for value in state["model"].values()):
        refuse("its model holds values that are not tensors")
