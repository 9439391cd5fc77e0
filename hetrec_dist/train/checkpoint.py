"""Checkpoints. One process: RUN/checkpoints/last.pt, written atomically, is always the newest complete one
(and epoch_NNNN.pt every checkpoint_every epochs). Several ranks: DeepSpeed's engine writes them
(RUN/checkpoints/epoch_NNNN/, its dense parameters and optimizer beside hetrec's own state) and points
RUN/checkpoints/latest at the newest once it is complete. Either kind loads into any number of ranks.
"""

import glob
import os
import shutil

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


DEEPSPEED_LATEST = "latest"                     # DeepSpeed's file naming its newest complete tag
DEEPSPEED_STATES = "mp_rank_00_model_states.pt"  # the engine's module and optimizer (ZeRO stage 0)
HETREC_STATE = "hetrec"                          # hetrec's state in DeepSpeed's client_state
KEEP_MARK = "keep"                               # in a tag folder kept every checkpoint_every epochs


def save_deepspeed_checkpoint(engine, directory, state, epoch, keep_epoch_file):
    """Called by every rank: DeepSpeed writes directory/epoch_NNNN/ (the engine's encoder, decoder and Adam,
    with the rest of `state` as client state) and then `latest`; rank 0 then removes the previous tag unless
    it was kept."""
    tag = f"epoch_{epoch:04d}"
    dense_keys = engine.module.state_dict().keys()
    own = {**state, "model": {k: v for k, v in state["model"].items() if k not in dense_keys}}
    del own["dense_optimizer"]
    engine.save_checkpoint(directory, tag=tag, client_state={HETREC_STATE: own}, save_latest=True)
    if engine.global_rank == 0:
        if keep_epoch_file:
            open(os.path.join(directory, tag, KEEP_MARK), "w").close()
        for folder in glob.glob(os.path.join(directory, "epoch_*" + os.sep)):
            folder = folder.rstrip(os.sep)
            if os.path.basename(folder) != tag and not os.path.exists(os.path.join(folder, KEEP_MARK)):
                shutil.rmtree(folder, ignore_errors=True)


def last_checkpoint(run_dir):
    """The newest complete checkpoint of a run (last.pt or the DeepSpeed tag `latest` names), or None."""
    directory = os.path.join(run_dir, "checkpoints")
    found = []
    single, latest = os.path.join(directory, "last.pt"), os.path.join(directory, DEEPSPEED_LATEST)
    if os.path.isfile(single):
        found.append((os.path.getmtime(single), single))
    if os.path.isfile(latest):
        with open(latest) as f:
            found.append((os.path.getmtime(latest), os.path.join(directory, f.read().strip())))
    return max(found)[1] if found else None


def _from_deepspeed(saved):
    state = saved[HETREC_STATE]
    return {**state, "model": {**saved["module"], **state["model"]}, "dense_optimizer": saved["optimizer"]}


def load_checkpoint(path, map_location="cpu"):
    """A checkpoint as a dict (model, optimizers, epoch, ...): a .pt file, or a DeepSpeed tag folder."""
    deepspeed_tag = os.path.isdir(path)
    try:
        saved = torch.load(os.path.join(path, DEEPSPEED_STATES) if deepspeed_tag else path,
                           map_location=map_location, weights_only=False)
        return _from_deepspeed(saved) if deepspeed_tag else saved
    except Exception as err:  # torch raises many types for damaged files
        raise UserError(f"{path}: not a readable checkpoint ({err})") from None
