"""The training loop of `hetrec train`: one process, or data-parallel ranks (distributed.data_parallel).

The loop is the algorithm: the model, both optimizers (through the ranks' DataParallel), the data,
checkpoints and the latents. Every feature around it (half-sets, the basis' confinement, the noise model, pose
and CTF refinement, an evaluation) is a component the loop calls at its hooks (train.components;
Trainer._components lists them). A run folder's files are named in data.run_folder; rank 0 writes them all,
z.npy holding the latent means of the run's particles (every particle of the store, or the subset
RUN/particles.npy names, data.subset; store order). A resumed run's checkpoint is checked in train.resume.

Each rank reads its own shard of the store (data.reader) with batch_size images a step; a step's global batch
is the union of the ranks' batches, and its gradients are those of the mean loss over the global batch. An
epoch ends at the first step some rank has no batch for.
Randomness is a function of (seed, epoch): data order, and the VAE's sampling noise, drawn for the global
batch and split by rank, so that 2 ranks with batch B take the steps one rank takes with batch 2B over the
same particles. A run resumed at an epoch boundary, with the same number of ranks, continues exactly as an
uninterrupted one; checkpoints do not depend on the number of ranks.
"""

import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
import uuid

import numpy as np
import torch
from tqdm import tqdm

from hetrec_dist.data.atomic_files import remove_temporaries
from hetrec_dist.data.reader import ChunkShuffledParticles, ParticleStore, ReadAhead
from hetrec_dist.data.run_folder import RunFolder
from hetrec_dist.data.store import content_sha256
from hetrec_dist.data.subset import check_resumed_subset, run_rows, subset_record, subset_rows, write_run_particles
from hetrec_dist.distributed.data_parallel import DataParallel
from hetrec_dist.distributed.process_tree import die_with_parent
from hetrec_dist.distributed.sparse_reducer import STRATEGIES
from hetrec_dist.distributed.training_world import TrainingWorld
from hetrec_dist.errors import UserError, is_out_of_memory
from hetrec_dist.model.hetvae import HetVAE
from hetrec_dist.train import focus_mask
from hetrec_dist.train.checkpoint import Checkpointer
from hetrec_dist.train.config import TrainConfig, save_config
from hetrec_dist.train.confinement import BasisConfinement
from hetrec_dist.train.ctf_refinement import CtfCorrections
from hetrec_dist.train.evaluation import Evaluation
from hetrec_dist.train.half_sets import HalfSets
from hetrec_dist.train.inference import embed, load_weights, resolve_device, save_latents
from hetrec_dist.train.memory import peak_memory_mib, return_freed_memory_to_os
from hetrec_dist.train.metrics import MetricsLogger, TensorBoardLogger, file_logger
from hetrec_dist.train.noise_model import NoiseModel
from hetrec_dist.train.pose_refinement import PoseCorrections
from hetrec_dist.train.resume import prepare_run_dir, resumed_checkpoint
from hetrec_dist.train.row_adam import RowSparseAdam

MIN_BOX, MAX_BOX = 16, 1024
MIN_PARTICLES = 10


def check_box(box):
    if box % 2 or not MIN_BOX <= box <= MAX_BOX:
        raise UserError(f"box {box} is not supported: training needs an even box from {MIN_BOX} to {MAX_BOX} "
                        "(downsample with `hetrec convert --box`)")


class Trainer:
    def __init__(self, store_path, run_dir, config: TrainConfig, world=None, resume=False, overwrite=False,
                 show_progress=True, command=None, evaluate=None, data=None, resume_checkpoint=None, ind=None,
                 exclude=None):
        """evaluate(model, z, epoch, metrics, rows) -> a line for train.log: called on rank 0 with the latent of
        each of the run's particles (rows: their store rows, None for all) after the last epoch (and every
        config.eval_every epochs), e.g. against a ground truth. ind, exclude: index files choosing the particles
        to train on (data.subset; a resumed run keeps its own).
        data: where this rank's batches come from (default: its shard of the store, data.reader); it has
        set_epoch(epoch), rank_particles() and iterates over batches."""
        self.store_path, self.run_dir, self.config = store_path, run_dir, config
        self.run = RunFolder(run_dir)  # its files' names
        self.world = world or TrainingWorld()
        self.show_progress = show_progress and self.world.is_root
        return_freed_memory_to_os()
        self.store, self.device = self.world.run_everywhere(lambda: self._open_inputs(store_path))
        store = self.store
        # a new run's focus mask is checked before its folder is made or an earlier run's emptied
        focus = None if resume else self.world.run_everywhere(
            lambda: focus_mask.for_new_run(config.focus_mask, store.box, store.pixel_size_A))
        self.run_lock = None  # rank 0's lock on the run folder, held as long as this Trainer lives
        self.world.run_on_root(lambda: setattr(self, "run_lock", prepare_run_dir(run_dir, resume, overwrite)))
        torch.manual_seed(config.seed)
        self.store_sha256 = content_sha256(store.group)
        if resume:
            saved, shape = self.world.run_everywhere(lambda: resumed_checkpoint(
                run_dir, resume_checkpoint, config, store, self.store_sha256, self.device))
        else:
            saved, shape = None, config.model_shape(store.box, store.pixel_size_A)
        self.rows = self._particles(store, saved, ind, exclude)
        self.n_store_particles = store.n_particles
        # the run's own id, kept on resume; rank 0's for all (saved is the same on every rank: all or none call)
        self.run_id = (saved or {}).get("run_id") or self.world.broadcast_object(uuid.uuid4().hex)
        self.model = HetVAE(shape, store.pixel_size_A, store.attrs["normalization"]["std"],
                            half_sets_join_A=config.half_sets_join_A).to(self.device)
        self.world.broadcast_(self.model.basis.data)
        self.ranks = DataParallel(self.world, self.model.dense_modules(), config.lr, config.batch_size,
                                  RowSparseAdam([self.model.basis], lr=config.lr_basis), config.basis_reduction,
                                  config.collective_timeout_s)
        self.components = self._components(store, saved, focus, evaluate)
        self.data = data or ChunkShuffledParticles(store_path, config.batch_size, rank=self.world.rank,
                                                   world_size=self.world.size, seed=config.seed, rows=self.rows)
        self.epoch, self.step = 0, 0
        self.checkpointer = Checkpointer(run_dir, self.world)
        if resume:
            self.world.run_everywhere(lambda: self.load_state_dict(saved))
        self.metrics, self.log = MetricsLogger(), logging.getLogger("hetrec.other_ranks")
        self.world.run_on_root(lambda: self._open_run_files(os.path.abspath(store_path), command))

    def _components(self, store, saved, focus, evaluate):
        """The run's features (train.components), in the order the loop calls them: one line each."""
        # built first: a focus mask it refuses leaves a new run's folder as it was (no half_sets.npy yet)
        confinement = BasisConfinement.for_run(self, store, saved, focus)
        components = [HalfSets.for_run(self, store, saved),
                      confinement,
                      NoiseModel.for_run(self, store, saved),
                      PoseCorrections.for_run(self, store, saved),
                      CtfCorrections.for_run(self, store, saved),
                      Evaluation(evaluate, self.config.eval_every) if evaluate else None]
        return [component for component in components if component is not None]

    def component(self, kind):
        """The run's component of class `kind` (train.components), or None."""
        return next((component for component in self.components if isinstance(component, kind)), None)

    def _particles(self, store, saved, ind, exclude):
        """The store rows this run trains on (data.subset; None for every particle): a resumed run's own, else
        those --ind/--exclude choose, written to RUN/particles.npy by rank 0."""
        rows = self.world.run_everywhere(lambda: subset_rows(store.group, ind, exclude))
        if saved is not None:
            check_resumed_subset(saved, rows, self.run_dir)
            return self.world.run_everywhere(lambda: run_rows(self.run_dir, saved, store.n_particles))
        least = max(MIN_PARTICLES, self.world.size)
        if rows is not None and len(rows) < least:
            raise UserError(f"--ind/--exclude leave {len(rows)} particle(s); training needs at least {least} "
                            f"({MIN_PARTICLES}, and one a rank)")
        if rows is not None:
            self.world.run_on_root(lambda: write_run_particles(self.run_dir, rows))
        return rows

    def _open_run_files(self, store_path, command):
        """On rank 0: config.yaml, TensorBoard and train.log; what killed writes left behind goes first."""
        left = remove_temporaries(self.run_dir) + self.checkpointer.remove_temporaries()
        save_config(self.config, self.run.config, store_path, command)
        self.metrics = TensorBoardLogger(self.run.tensorboard)
        self.log = file_logger(self.run.log)
        if left:
            self.log.info(f"removed {len(left)} unfinished file(s) a stopped run left: {', '.join(left)}")

    def _open_inputs(self, store_path):
        """The store and the device, or a UserError saying what is wrong with them."""
        store = ParticleStore(store_path)
        check_box(store.box)
        least = max(MIN_PARTICLES, self.world.size)
        if store.n_particles < least:
            raise UserError(f"{store_path} holds {store.n_particles} particle(s); training needs at least {least} "
                            f"({MIN_PARTICLES}, and one a rank): a latent space of fewer says nothing")
        return store, resolve_device(self.config.device, self.world.local_rank)

    def state_dict(self):
        return {"model": self.model.state_dict(), "model_shape": dataclasses.asdict(self.model.shape),
                "pixel_size_A": self.model.pixel_size_A, "image_std": self.model.image_std,
                **self.ranks.state_dict(),
                **{k: v for component in self.components for k, v in component.checkpoint_entries().items()},
                "epoch": self.epoch, "step": self.step, "config": dataclasses.asdict(self.config),
                "run_id": self.run_id, "store_sha256": self.store_sha256,
                **({} if self.rows is None else {"particles": subset_record(self.rows)})}

    def load_state_dict(self, state):
        """A checkpoint of this run's model shape (train.resume.resumed_checkpoint)."""
        load_weights(self.model, state["model"])
        self.ranks.load_state_dict(state)
        for component in self.components:
            component.load_checkpoint(state)
        self.epoch, self.step = state["epoch"], state["step"]

    def _synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self, batch, noise, share):
        """One optimisation step on this rank's `share` of the global batch; returns the loss terms, the
        step-time split (seconds) and the reducer's stats (None in one process)."""
        started = time.perf_counter()
        out = self.model(batch, beta=self.config.beta, noise=noise, basis_factors=True,
                         noise_weights=batch.get("noise_weights"))
        self._synchronize()
        forward_done = time.perf_counter()
        for component in self.components:
            component.after_forward(self, batch, out)
        self._synchronize()
        components_done = time.perf_counter()
        self.ranks.backward(out["loss"], share)
        self._synchronize()
        backward_done = time.perf_counter()
        reduction = self.ranks.basis_gradient(out["factors"])
        reduce_done = time.perf_counter()
        self.ranks.step()
        self._synchronize()
        timings = {"forward_s": forward_done - started, "components_s": components_done - forward_done,
                   "backward_s": backward_done - components_done,
                   "reduce_s": reduce_done - backward_done, "optimizer_s": time.perf_counter() - reduce_done}
        return out, timings, reduction

    def _loader(self):
        """The epoch's batches: read in this process (a thread reading ahead), or by spawned DataLoader workers
        (see data.reader)."""
        workers = self.config.num_workers
        if workers == 0:
            return ReadAhead(self.data)
        return torch.utils.data.DataLoader(self.data, batch_size=None, num_workers=workers,
                                           multiprocessing_context="spawn", pin_memory=self.device.type == "cuda",
                                           worker_init_fn=functools.partial(die_with_parent, os.getpid()))

    def _train_steps(self, batches, generator, totals, progress):
        """The epoch's steps, until some rank has no batch; adds each step's loss terms into totals. Returns
        (this rank's images, the last step's forward output)."""
        n_images, out = 0, None
        while True:
            data_started = time.perf_counter()
            batch = next(batches, None)
            share = self.ranks.share(0 if batch is None else len(batch["index"]))
            if share is None:
                return n_images, out
            for component in self.components:
                batch = component.on_batch(self, batch)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            data_s = time.perf_counter() - data_started
            noise = share.own(torch.randn(share.n_global, self.config.zdim, generator=generator, device=self.device))
            out, timings, reduction = self.train_step(batch, noise, share)
            self.step += 1
            for component in self.components:
                component.after_step(self)
            n_images += share.size
            for key in totals:
                totals[key] += out[key].item() * share.size
            progress.update(share.n_global)
            progress.set_postfix(loss=f"{out['loss'].item():.4f}", refresh=False)
            if self.step % self.config.log_every == 0:
                self._log_step(out, data_s + sum(timings.values()), share, data_s, timings, reduction)

    def train_epoch(self):
        self.model.train()
        self.data.set_epoch(self.epoch)
        generator = torch.Generator(self.device).manual_seed(self.config.seed * 1_000_003 + self.epoch)
        totals, epoch_started = {"loss": 0.0, "data": 0.0, "kl": 0.0}, time.perf_counter()
        progress = tqdm(total=self.data.rank_particles() * self.world.size, unit="img",
                        disable=not self.show_progress, desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                        dynamic_ncols=True, leave=False)
        batches = iter(self._loader())
        try:
            n_images, out = self._train_steps(batches, generator, totals, progress)
        finally:
            if isinstance(batches, ReadAhead):
                batches.close()
            progress.close()  # cleared, so that an error is not printed on the bar's line
        self.epoch += 1
        self._show_examples(out)
        for component in self.components:
            component.end_epoch(self)
        *sums, n_images = self.world.all_sum(list(totals.values()) + [n_images])
        summary = {k: v / max(n_images, 1) for k, v in zip(totals, sums)}
        summary["images_per_s"] = n_images / (time.perf_counter() - epoch_started)
        self.metrics.scalars({f"epoch/{k}": v for k, v in summary.items()}, self.epoch)
        return summary

    def _log_step(self, out, step_s, share, data_s, timings, reduction):
        values = {"train/loss": out["loss"].item(), "train/data": out["data"].item(), "train/kl": out["kl"].item(),
                  "perf/images_per_s": share.n_global / step_s, "perf/images_per_s_per_rank": share.size / step_s,
                  "perf/touched_fraction": out["touched_fraction"],
                  "perf/peak_memory_MiB": peak_memory_mib(self.device), "time/data_s": data_s,
                  **{f"time/{k}": v for k, v in timings.items()}}
        for component in self.components:
            values.update(component.step_metrics())
        if reduction is not None:
            values.update({"reduce/bytes_sent": reduction.bytes_sent, "reduce/dense_bytes": reduction.dense_bytes,
                           "reduce/union_density": reduction.union_rows / self.model.basis.shape[0],
                           "reduce/strategy": STRATEGIES.index(reduction.strategy)})
        self.metrics.scalars(values, self.step)

    def _show_examples(self, out, n=4):
        """TensorBoard: the shift-corrected, low-passed data of a few images next to the model's prediction."""
        if not self.world.is_root:
            return
        with torch.no_grad():
            data = self.model.half_disk_to_image(out["observed"][:n].detach())
            model = self.model.half_disk_to_image(out["predicted"][:n].detach())
        pairs = torch.cat([data, model], dim=2).cpu().numpy()
        self.metrics.images("examples/data_vs_model", pairs, self.epoch)

    def train(self):
        """Train to config.epochs, write z.npy (and evaluate against config.gt). Raises RankLost when the
        other ranks stop answering."""
        resume_hint = (f"continue from the last checkpoint in {self.run_dir}/checkpoints with --resume, on any "
                       "number of ranks")
        try:
            with self.ranks.lost_peers_stop_here(resume_hint):
                self._train()
        except UserError as err:
            self.log.error(f"stopped: {err}")
            raise
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            where = "GPU" if self.device.type == "cuda" else "host"
            error = UserError(f"out of {where} memory while training: lower --batch-size (now "
                              f"{self.config.batch_size}), the box (`hetrec convert --box`) or max_resolution_A in a "
                              f"--config file, then {resume_hint}")
            self.log.error(f"stopped: {error}")
            raise error from None
        finally:
            with contextlib.suppress(OSError):  # a full disk already stopped the run
                self.metrics.close()

    def _train(self):
        self.log.info(f"training {self.store_path} on {self.device} x {self.ranks.describe()}, batch "
                      f"{self.config.batch_size} a rank, from epoch {self.epoch}")
        if self.rows is not None:
            self.tell(f"training on {len(self.rows)} of the store's {self.n_store_particles} particles "
                      "(RUN/particles.npy)")
        self.metrics.scalars({"ranks/size": self.world.size, "ranks/shared_memory": float(self.world.shared_memory)},
                             self.step)
        shape, pixel_size_A = self.model.shape, self.model.pixel_size_A
        self.tell(f"the model compares images to {pixel_size_A / shape.max_radius:.3g} Å "
                  f"({round(shape.max_radius * shape.box)} Fourier shells), its encoder reads them to "
                  f"{pixel_size_A / shape.encoder_radius:.3g} Å; noise_model {self.config.noise_model}")
        for hint in self.ranks.hints():
            self.hint(hint)
        for component in self.components:
            component.start(self)
        while self.epoch < self.config.epochs:
            summary = self.train_epoch()
            if not math.isfinite(summary["loss"]):  # summed over ranks: every rank stops here together
                raise UserError(f"the loss became {summary['loss']} in epoch {self.epoch}; nothing of this epoch "
                                "was saved (settings or data that give NaN: see train.log and TensorBoard)")
            line = ", ".join(f"{k} {v:.5g}" for k, v in summary.items())
            self.log.info(f"epoch {self.epoch}: {line}")
            if self.show_progress:
                tqdm.write(f"epoch {self.epoch}/{self.config.epochs}: {line}")
            keep = self.epoch % self.config.checkpoint_every == 0 or self.epoch == self.config.epochs
            self.checkpointer.save(self.state_dict, self.epoch, keep)
            for component in self.components:
                component.on_checkpoint(self)
        z = self.write_latents()
        for component in self.components:
            component.finish(self, z)

    def hint(self, line):
        self.tell(f"hint: {line}")

    def tell(self, line):
        """A line in train.log, and on the console unless --quiet."""
        self.log.info(line)
        if self.show_progress:
            tqdm.write(line)

    def gather_latents(self):
        """Latent means of the run's particles, in store order, on rank 0 (None on the others)."""
        self.model.eval()
        poses = self.component(PoseCorrections)
        shift_corrections = None if poses is None else poses.table[:, 3:]
        parts = self.world.gather_object(embed(self.model, self.store_path, rank=self.world.rank,
                                               world_size=self.world.size, shift_corrections=shift_corrections,
                                               rows=self.rows))
        return np.concatenate(parts) if self.world.is_root else None

    def write_latents(self):
        z = self.gather_latents()
        if self.world.is_root:
            save_latents(self.run.latents, z, {"epoch": self.epoch, "step": self.step,
                                                                 "run_id": self.run_id}, self.store_sha256, self.rows)
            self.log.info(f"wrote z.npy ({z.shape[0]} x {z.shape[1]})")
        return z
