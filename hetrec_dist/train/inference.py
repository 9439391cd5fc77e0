"""A trained model applied: the device to run on, the model of a checkpoint, and the latents of a store."""

import json
import os

import numpy as np
import torch

from hetrec_dist.data.atomic_files import save_array, write_atomically
from hetrec_dist.data.reader import ChunkShuffledParticles, ParticleStore
from hetrec_dist.errors import UserError
from hetrec_dist.model.hetvae import HetVAE, ModelShape


def resolve_device(name, local_rank=0):
    """cpu, cuda, cuda:N or auto; with several ranks a node, rank i of a node takes GPU i."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but no CUDA GPU is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def load_model(checkpoint, device="cpu"):
    """The model of a checkpoint (train.checkpoint.load_checkpoint's dict), in eval mode."""
    model = HetVAE(ModelShape(**checkpoint["model_shape"]), checkpoint["pixel_size_A"], checkpoint["image_std"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


def latents_record_path(path):
    """Where the record of what made a latents file lives: z.npy -> z.json."""
    return os.path.splitext(path)[0] + ".json"


def save_latents(path, z, checkpoint):
    """Write z to path (.npy), and beside it (latents_record_path) the epoch and step of the checkpoint
    (load_checkpoint's dict) whose model embedded them, each through a temporary file, so that a reader
    never sees half of either, and later commands can tell latents of another checkpoint (read_run_latents)."""
    record = {"epoch": int(checkpoint["epoch"]), "step": int(checkpoint["step"]), "n_particles": len(z)}
    write_atomically(latents_record_path(path), lambda temporary: _write_text(temporary, json.dumps(record)))
    save_array(path, z)


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def read_run_latents(path, checkpoint):
    """The latents saved at `path` by save_latents, refused (UserError) where they came from another
    checkpoint than `checkpoint`. Latents without a record (written before records existed) are taken as
    they are."""
    z = np.load(path)
    record_path = latents_record_path(path)
    if os.path.isfile(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if (record["epoch"], record["step"]) != (checkpoint["epoch"], checkpoint["step"]):
            raise UserError(f"{path} holds the latents of epoch {record['epoch']} (step {record['step']}), but the "
                            f"model is that of epoch {checkpoint['epoch']} (step {checkpoint['step']}); run "
                            "`hetrec embed` on the run to compute them again")
    return z


@torch.no_grad()
def embed(model, store_path, batch_size=512, rank=0, world_size=1, shift_corrections=None):
    """Latent means (n x zdim), in store order, of this rank's contiguous share of the store (all of it
    for one rank). shift_corrections (N x 2 pixels, store order; a run that refined its poses): added to the
    store's shifts, as training adds them."""
    box = ParticleStore(store_path).box
    if box != model.shape.box:
        raise UserError(f"{store_path} holds images of box {box}; the model was trained on box {model.shape.box}")
    dataset = ChunkShuffledParticles(store_path, batch_size=batch_size, rank=rank, world_size=world_size,
                                     shuffle=False)
    device = model.basis.device
    means = []
    for batch in dataset:
        if shift_corrections is not None:
            batch["shifts"] = (batch["shifts"] + shift_corrections[batch["index"].long()]).float()
        batch = {k: v.to(device) for k, v in batch.items()}
        means.append(model.encode(model.observed_spectra(batch))[0].cpu())
    return torch.cat(means).numpy()
