"""A run's folder made ready (new, resumed or replaced), and a resumed run's checkpoint checked against what it
is resumed with, in one place: each refusal one line (UserError). What a component keeps (half-sets, focus
mask, corrections) it checks itself when it takes its state back (train.components)."""

import os

from hetrec_dist.data.folder_lock import FolderLock, empty_folder_but_its_lock, entries_but_the_lock
from hetrec_dist.data.run_folder import RunFolder
from hetrec_dist.data.store import check_same_particles
from hetrec_dist.errors import UserError
from hetrec_dist.model.hetvae import ModelShape
from hetrec_dist.train.checkpoint import last_checkpoint, load_checkpoint


def prepare_run_dir(run_dir, resume, overwrite):
    """Lock RUN for this run (the FolderLock returned: hold it while the run writes) and make it ready: a new
    folder, a run to resume, or one to replace. A run another process is writing is never touched."""
    entries = entries_but_the_lock(run_dir)
    if resume and last_checkpoint(run_dir) is None:
        raise UserError(f"{run_dir}: nothing to resume (no checkpoint in {run_dir}/checkpoints)")
    if entries and not resume:
        if not overwrite:
            raise UserError(f"{run_dir} already exists; use --resume to continue it or --overwrite to replace it")
        if os.path.basename(RunFolder(run_dir).config) not in entries:
            raise UserError(f"{run_dir} is not a training run; refusing to overwrite it")
    lock = FolderLock(run_dir, "training run").acquire()
    if entries and overwrite:
        lock.check_no_readers()
        empty_folder_but_its_lock(run_dir)
    return lock


def resumed_checkpoint(run_dir, checkpoint_path, config, store, store_sha256, device):
    """(the checkpoint a resumed run continues from, its ModelShape): checkpoint_path, or the run's last, loaded
    to `device`. Refused where the store's box, the settings that size the model or the half-sets differ from
    the checkpoint's model, where the store (identity store_sha256, data.store.content_sha256) holds other
    particles than the run trained on, or where the run has trained config.epochs already."""
    saved = load_checkpoint(checkpoint_path or last_checkpoint(run_dir), device)
    shape = resumed_shape(saved, config, store)
    check_same_particles(saved, store_sha256, store.path, run_dir)
    if saved["epoch"] >= config.epochs:
        raise UserError(f"{run_dir} has trained {saved['epoch']} epochs already; give --epochs above "
                        f"{saved['epoch']} to train on (`hetrec embed` recomputes its latents)")
    return saved, shape


def resumed_shape(checkpoint, config, store):
    """A resumed run keeps its checkpoint's model shape (its Fourier radii too, whatever today's defaults in
    Å give); the settings that size the layers, and the store's box, must still agree with it."""
    shape = ModelShape(**checkpoint["model_shape"])
    if shape.box != store.box:
        raise UserError(f"the run was trained on images of box {shape.box}; {store.path} holds box {store.box}")
    differ = [name for name in ("zdim", "n_basis", "encoder_hidden", "encoder_blocks")
              if getattr(shape, name) != getattr(config, name)]
    if (shape.n_half_sets == 2) != config.half_sets:
        raise UserError(f"the checkpoint's model was trained {'with' if shape.n_half_sets == 2 else 'without'} "
                        f"half-sets; resume it {'with' if shape.n_half_sets == 2 else 'without'} --half-sets")
    if differ:
        raise UserError(f"the checkpoint's model has {', '.join(f'{n} {getattr(shape, n)}' for n in differ)}, "
                        f"but the settings ask for {', '.join(f'{n} {getattr(config, n)}' for n in differ)}")
    return shape
