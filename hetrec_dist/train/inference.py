"""A trained model applied: the device to run on, the model of a checkpoint, and the latents of a store."""

import hashlib
import json
import os

import numpy as np
import torch

from hetrec_dist.data.atomic_files import save_array, write_text
from hetrec_dist.data.reader import ChunkShuffledParticles, ParticleStore
from hetrec_dist.data.subset import subset_record
from hetrec_dist.errors import UserError
from hetrec_dist.model.hetvae import HetVAE, ModelShape
from hetrec_dist.physics.fourier_grid import squared_magnitude


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
    if device.type not in ("cpu", "cuda"):  # mps, xpu, meta…: hetrec runs on neither
        raise UserError(f"device {name!r}: hetrec runs on cpu or cuda (cuda, cuda:N or auto)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def load_model(checkpoint, device="cpu"):
    """The model of a checkpoint (train.checkpoint.load_checkpoint's dict), in eval mode."""
    try:
        model = HetVAE(ModelShape(**checkpoint["model_shape"]), checkpoint["pixel_size_A"], checkpoint["image_std"],
                       half_sets_join_A=checkpoint.get("config", {}).get("half_sets_join_A"))
    except (TypeError, ValueError, KeyError) as err:  # a shape hetrec did not write
        raise _not_this_model(err) from None
    load_weights(model, checkpoint["model"])
    return model.to(device).eval()


def load_weights(model, weights):
    """model.load_state_dict(weights); UserError (one line) where they do not fit the model's shape."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:  # weights of another shape than the checkpoint's model_shape says
        raise _not_this_model(err) from None


def _not_this_model(err):
    return UserError(f"the checkpoint's model does not match its model_shape ({' '.join(str(err).split())[:200]});"
                     " give a checkpoint `hetrec train` wrote")


def latents_record_path(path):
    """Where the record of what made a latents file lives: z.npy -> z.json."""
    return os.path.splitext(path)[0] + ".json"


def _z_sha256(z):
    return hashlib.sha256(np.ascontiguousarray(z).tobytes()).hexdigest()


def save_latents(path, z, checkpoint, store_sha256=None, rows=None):
    """Write z to path (.npy), and beside it (latents_record_path) what made them: the run, epoch and step of
    the checkpoint (load_checkpoint's dict) whose model embedded them, the identity of the store whose
    particles they are (data.store.content_sha256), which of its particles (rows: sorted store rows of a
    subset, data.subset, recorded with their SHA-256; None for all) and a SHA-256 of z itself. Each file is
    written whole (write_atomically); since a kill can come between the two, the record names z's content, and
    read_run_latents refuses a pair of two different writes."""
    record = {"epoch": int(checkpoint["epoch"]), "step": int(checkpoint["step"]), "n_particles": len(z),
              "run_id": checkpoint.get("run_id"), "store_sha256": store_sha256, "z_sha256": _z_sha256(z),
              "particles": subset_record(rows)}
    write_text(latents_record_path(path), json.dumps(record))
    save_array(path, z)


def latents_record(path):
    """The record save_latents wrote beside the latents at `path` (a dict), or None where there is none."""
    record_path = latents_record_path(path)
    if not os.path.isfile(record_path):
        return None
    try:
        with open(record_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        raise UserError(f"{record_path}: unreadable; run `hetrec embed` on the run to write it again") from None


def read_run_latents(path, checkpoint):
    """(the latents saved at `path` by save_latents, their record or None). UserError where they came from
    another checkpoint than `checkpoint` (another run, epoch or step), from another store than the
    checkpoint's particles, or where z.npy and its record come from two different writes. Latents without a
    record (written before records existed) are taken as they are; so is what older records do not hold."""
    again = "run `hetrec embed` on the run to compute them again"
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:120]
        raise UserError(f"{path}: not a latents file hetrec wrote ({reason}); {again}") from None
    zdim = checkpoint["model_shape"]["zdim"]
    finite = bool(np.isfinite(z).all())
    if z.ndim != 2 or z.shape[1] != zdim or not np.issubdtype(z.dtype, np.floating) or not finite:
        raise UserError(f"{path} holds a {z.dtype} array of shape {z.shape}{'' if finite else ' with NaN'}, not "
                        f"the finite N x {zdim} latents of this run's model; {again}")
    record = latents_record(path)
    if record is None:
        if checkpoint.get("run_id") is not None:  # this hetrec writes a record with every z.npy
            raise UserError(f"{path} has no record ({os.path.basename(latents_record_path(path))}) of the model that "
                            f"made it; {again}")
        return z, None
    if record.get("n_particles", len(z)) != len(z):
        raise UserError(f"{path} holds {len(z)} latents, its record {record['n_particles']}; {again}")
    if record.get("z_sha256") not in (None, _z_sha256(z)):
        raise UserError(f"{path} and {os.path.basename(latents_record_path(path))} are of two different writes (one "
                        f"was stopped between them); {again}")
    if (record["epoch"], record["step"]) != (checkpoint["epoch"], checkpoint["step"]) or (
            None not in (record.get("run_id"), checkpoint.get("run_id")) and record["run_id"] != checkpoint["run_id"]):
        other_run = record.get("run_id") not in (None, checkpoint.get("run_id"))
        raise UserError(f"{path} holds the latents of {'another run, ' if other_run else ''}epoch "
                        f"{record['epoch']} (step {record['step']}), but the model is that of epoch "
                        f"{checkpoint['epoch']} (step {checkpoint['step']}); {again}")
    if None not in (record.get("store_sha256"), checkpoint.get("store_sha256")) and (
            record["store_sha256"] != checkpoint["store_sha256"]):
        raise UserError(f"{path} holds the latents of other particles than the run was trained on (an `embed "
                        f"--store` of another store); {again}")
    if "particles" in record and record["particles"] != checkpoint.get("particles"):
        raise UserError(f"{path} holds the latents of other particles of the store than the run trained on; "
                        f"{again}")
    return z, record


def _batches(model, store_path, batch_size, shift_corrections, rows, rank=0, world_size=1):
    """(the reader, its batches on the model's device, in store order), shift corrections added."""
    box = ParticleStore(store_path).box
    if box != model.shape.box:
        raise UserError(f"{store_path} holds images of box {box}; the model was trained on box {model.shape.box}")
    dataset = ChunkShuffledParticles(store_path, batch_size=batch_size, rank=rank, world_size=world_size,
                                     shuffle=False, rows=rows)
    device = model.basis.device

    def batches():
        for batch in dataset:
            if shift_corrections is not None:
                batch["shifts"] = (batch["shifts"] + shift_corrections[batch["index"].long()]).float()
            yield {k: v.to(device) for k, v in batch.items()}

    return dataset, batches()


@torch.no_grad()
def embed(model, store_path, batch_size=512, rank=0, world_size=1, shift_corrections=None, rows=None):
    """Latent means (n x zdim), in store order, of this rank's contiguous share of the store's particles (all
    of them for one rank), or of the subset at `rows` (sorted store rows, data.subset). shift_corrections
    (N x 2 pixels, store order; a run that refined its poses): added to the store's shifts, as training adds
    them."""
    dataset, batches = _batches(model, store_path, batch_size, shift_corrections, rows, rank, world_size)
    # filled in place: a list of each batch's small result, kept while the batch's large temporaries come and
    # go, let the heap fragment until the process held about 7.5 kB more a particle (docs/benchmarks.md)
    means, filled = np.empty((dataset.rank_particles(), model.shape.zdim), np.float32), 0
    for batch in batches:
        mu = model.encode(model.observed_spectra(batch))[0]
        means[filled:filled + len(mu)] = mu.cpu().numpy()
        filled += len(mu)
    return means


@torch.no_grad()
def signal_scores(model, store_path, batch_size=512, shift_corrections=None, rows=None):
    """Each particle's signal score (n, store order, or of the subset at `rows`): how much the model's map at
    its latent mean lowers the squared residual of its image against predicting nothing, sum_p w_p (|Y_p|^2 -
    |Y_p - CTF_p S_p|^2) over the half-disk (w_p: 2 where a point stands for its Friedel mate too), over the
    median of every particle's. About 1 for a typical particle; near 0 (or below) for an image in which the
    model finds none of its own density: empty images, ice, carbon edges, small fragments. A half-set model is
    asked with its first half-set's basis."""
    dataset, batches = _batches(model, store_path, batch_size, shift_corrections, rows)
    gains, filled = np.empty(dataset.rank_particles(), np.float64), 0
    for batch in batches:
        if model.shape.n_half_sets == 2:
            batch["half_set"] = torch.ones(len(batch["images"]), dtype=torch.int8, device=model.basis.device)
        out = model(batch)
        residual = squared_magnitude(out["observed"] - out["predicted"])
        gain = ((squared_magnitude(out["observed"]) - residual) * model.disk.weights).sum(1)
        gains[filled:filled + len(gain)] = gain.double().cpu().numpy()
        filled += len(gain)
    median = np.median(gains)
    return (gains / median if median > 0 else gains).astype(np.float32)
