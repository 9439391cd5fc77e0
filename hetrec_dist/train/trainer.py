"""The training loop of `hetrec train`: one process (this module), reading a particle store.

RUN/ holds config.yaml, train.log, tb/ (TensorBoard), checkpoints/ (last.pt and every
checkpoint_every epochs epoch_NNNN.pt) and z.npy (latent means of all particles, store order).
Randomness is a function of (seed, epoch): data order and the VAE's sampling noise, so a run resumed at an
epoch boundary continues exactly as an uninterrupted one.
"""

import dataclasses
import os
import shutil
import time

import numpy as np
import torch
from tqdm import tqdm

from hetrec_dist.analysis.ground_truth import evaluate_run
from hetrec_dist.data.reader import ChunkShuffledParticles, ParticleStore
from hetrec_dist.errors import UserError
from hetrec_dist.model.hetvae import HetVAE, ModelShape
from hetrec_dist.train.checkpoint import last_checkpoint, load_checkpoint, save_checkpoint
from hetrec_dist.train.config import TrainConfig, save_config
from hetrec_dist.train.memory import peak_memory_mib, return_freed_memory_to_os
from hetrec_dist.train.metrics import TensorBoardLogger, file_logger

MIN_BOX, MAX_BOX = 16, 1024


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def check_box(box):
    if box % 2 or not MIN_BOX <= box <= MAX_BOX:
        raise UserError(f"box {box} is not supported: training needs an even box from {MIN_BOX} to {MAX_BOX} "
                        "(downsample with `hetrec convert --box`)")


def prepare_run_dir(run_dir, resume, overwrite):
    if resume:
        if last_checkpoint(run_dir) is None:
            raise UserError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
        return
    if os.path.exists(run_dir) and os.listdir(run_dir):
        if not overwrite:
            raise UserError(f"{run_dir} already exists; use --resume to continue it or --overwrite to replace it")
        if not os.path.isfile(os.path.join(run_dir, "config.yaml")):
            raise UserError(f"{run_dir} is not a training run; refusing to overwrite it")
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)


def load_model(checkpoint, device="cpu"):
    """The model of a checkpoint, in eval mode."""
    model = HetVAE(ModelShape(**checkpoint["model_shape"]), checkpoint["pixel_size_A"], checkpoint["image_std"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


def save_latents(path, z):
    """Write z to path (.npy) through a temporary file, so a reader never sees half of it."""
    np.save(path + ".tmp.npy", z)
    os.replace(path + ".tmp.npy", path)


@torch.no_grad()
def embed(model, store_path, batch_size=512):
    """Latent means (N x zdim) of every particle, in store order."""
    dataset = ChunkShuffledParticles(store_path, batch_size=batch_size, shuffle=False)
    device = model.basis.device
    means = []
    for batch in dataset:
        batch = {k: v.to(device) for k, v in batch.items()}
        means.append(model.encode(model.observed_spectra(batch))[0].cpu())
    return torch.cat(means).numpy()


class Trainer:
    def __init__(self, store_path, run_dir, config: TrainConfig, resume=False, overwrite=False,
                 show_progress=True, command=None):
        self.store_path, self.run_dir, self.config = store_path, run_dir, config
        self.show_progress = show_progress
        return_freed_memory_to_os()
        store = ParticleStore(store_path)
        check_box(store.box)
        self.device = resolve_device(config.device)
        prepare_run_dir(run_dir, resume, overwrite)
        torch.manual_seed(config.seed)
        shape = config.model_shape(store.box)
        self.model = HetVAE(shape, store.pixel_size_A, store.attrs["normalization"]["std"]).to(self.device)
        self.dense_optimizer = torch.optim.Adam(self.model.dense_parameters(), lr=config.lr)
        self.basis_optimizer = torch.optim.SparseAdam([self.model.basis], lr=config.lr_basis)
        self.dataset = ChunkShuffledParticles(store_path, config.batch_size, seed=config.seed)
        self.epoch, self.step = 0, 0
        if resume:
            self.load_state_dict(load_checkpoint(last_checkpoint(run_dir), self.device))
        save_config(config, os.path.join(run_dir, "config.yaml"), os.path.abspath(store_path), command)
        self.metrics = TensorBoardLogger(os.path.join(run_dir, "tb"))
        self.log = file_logger(os.path.join(run_dir, "train.log"))

    def state_dict(self):
        return {"model": self.model.state_dict(), "model_shape": dataclasses.asdict(self.model.shape),
                "pixel_size_A": self.model.pixel_size_A, "image_std": self.model.image_std,
                "dense_optimizer": self.dense_optimizer.state_dict(),
                "basis_optimizer": self.basis_optimizer.state_dict(),
                "epoch": self.epoch, "step": self.step, "config": dataclasses.asdict(self.config)}

    def load_state_dict(self, state):
        if state.get("model_shape") != dataclasses.asdict(self.model.shape):
            raise UserError(f"the checkpoint's model shape {state.get('model_shape')} differs from this run's "
                            f"{dataclasses.asdict(self.model.shape)}")
        self.model.load_state_dict(state["model"])
        self.dense_optimizer.load_state_dict(state["dense_optimizer"])
        self.basis_optimizer.load_state_dict(state["basis_optimizer"])
        self.epoch, self.step = state["epoch"], state["step"]

    def _synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self, batch, generator):
        """One optimisation step; returns the loss terms and the step-time split (seconds)."""
        started = time.perf_counter()
        out = self.model(batch, beta=self.config.beta, generator=generator)
        self._synchronize()
        forward_done = time.perf_counter()
        self.dense_optimizer.zero_grad(set_to_none=True)
        self.basis_optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        self._synchronize()
        backward_done = time.perf_counter()
        self.dense_optimizer.step()
        self.basis_optimizer.step()
        self._synchronize()
        timings = {"forward_s": forward_done - started, "backward_s": backward_done - forward_done,
                   "optimizer_s": time.perf_counter() - backward_done}
        return out, timings

    def _loader(self):
        """The epoch's batches: read in this process, or by spawned DataLoader workers (see data.reader)."""
        workers = self.config.num_workers
        if workers == 0:
            return self.dataset
        return torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=workers,
                                           multiprocessing_context="spawn", pin_memory=self.device.type == "cuda")

    def train_epoch(self):
        self.model.train()
        self.dataset.set_epoch(self.epoch)
        generator = torch.Generator(self.device).manual_seed(self.config.seed * 1_000_003 + self.epoch)
        totals, n_images, epoch_started = {"loss": 0.0, "data": 0.0, "kl": 0.0}, 0, time.perf_counter()
        progress = tqdm(total=self.dataset.rank_particles(), unit="img", disable=not self.show_progress,
                        desc=f"epoch {self.epoch + 1}/{self.config.epochs}", dynamic_ncols=True, leave=False)
        batches = iter(self._loader())
        while True:
            data_started = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            data_s = time.perf_counter() - data_started
            out, timings = self.train_step(batch, generator)
            size = len(batch["index"])
            n_images += size
            for key in totals:
                totals[key] += out[key].item() * size
            self.step += 1
            step_s = data_s + sum(timings.values())
            progress.update(size)
            progress.set_postfix(loss=f"{out['loss'].item():.4f}", refresh=False)
            if self.step % self.config.log_every == 0:
                self.metrics.scalars({
                    "train/loss": out["loss"].item(), "train/data": out["data"].item(), "train/kl": out["kl"].item(),
                    "perf/images_per_s": size / step_s, "perf/touched_fraction": out["touched_fraction"],
                    "perf/peak_memory_MiB": peak_memory_mib(self.device), "time/data_s": data_s,
                    **{f"time/{k}": v for k, v in timings.items()}}, self.step)
        progress.close()
        self.epoch += 1
        self._show_examples(out)
        summary = {k: v / max(n_images, 1) for k, v in totals.items()}
        summary["images_per_s"] = n_images / (time.perf_counter() - epoch_started)
        self.metrics.scalars({f"epoch/{k}": v for k, v in summary.items()}, self.epoch)
        return summary

    def _show_examples(self, out, n=4):
        """TensorBoard: the shift-corrected, low-passed data of a few images next to the model's prediction."""
        with torch.no_grad():
            data = self.model.half_disk_to_image(out["observed"][:n].detach())
            model = self.model.half_disk_to_image(out["predicted"][:n].detach())
        pairs = torch.cat([data, model], dim=2).cpu().numpy()
        self.metrics.images("examples/data_vs_model", pairs, self.epoch)

    def train(self):
        self.log.info(f"training {self.store_path} on {self.device} from epoch {self.epoch}")
        while self.epoch < self.config.epochs:
            summary = self.train_epoch()
            line = ", ".join(f"{k} {v:.5g}" for k, v in summary.items())
            self.log.info(f"epoch {self.epoch}: {line}")
            if self.show_progress:
                tqdm.write(f"epoch {self.epoch}/{self.config.epochs}: {line}")
            keep = self.epoch % self.config.checkpoint_every == 0 or self.epoch == self.config.epochs
            save_checkpoint(os.path.join(self.run_dir, "checkpoints"), self.state_dict(), self.epoch, keep)
            every = self.config.eval_every
            if self.config.gt and every and self.epoch % every == 0 and self.epoch < self.config.epochs:
                self.model.eval()
                self.evaluate(embed(self.model, self.store_path))
        z = self.write_latents()
        if self.config.gt:
            self.evaluate(z)
        self.metrics.close()

    def write_latents(self):
        self.model.eval()
        z = embed(self.model, self.store_path)
        save_latents(os.path.join(self.run_dir, "z.npy"), z)
        self.log.info(f"wrote z.npy ({z.shape[0]} x {z.shape[1]})")
        return z

    def evaluate(self, z):
        """Against the simulated ground truth: RUN/eval.json, TensorBoard eval/*, train.log."""
        result = evaluate_run(self.run_dir, self.model, z, self.config.gt, self.metrics, self.epoch)
        self.log.info(f"epoch {self.epoch} eval: mean FSC {result['mean_fsc']:.4f}, "
                      f"latent PC1 |Spearman| {result['latent_pc1_spearman']:.4f}, linear R^2 {result['latent_linear_r2']:.4f}")
