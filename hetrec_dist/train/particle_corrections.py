"""What per-particle refinements share (train.pose_refinement, train.ctf_refinement): a table of corrections
kept on every rank and added up across ranks each epoch, and one damped Gauss-Newton step on a particle's
data term plus a Gaussian prior on its correction.

Each particle's correction starts at zero. After the warm-up epochs, each time a particle is in a batch its
correction c takes one Levenberg-Marquardt step at the model of that step (HetVAE gives the data term's
gradient g and Gauss-Newton matrix H over the correction's columns and the particle's latent):
    step = -(A + damping diag(A))^-1 (g + P c),   A = H + P,
P the prior's precision (zero on the latent's columns). Where one image says little (low SNR, few shells)
the prior keeps the correction near zero, so that it does not wander with the noise. The latent's part of
the step is dropped (the encoder places the particle); solving for it with the correction leaves to the
latent what a change of conformation explains.

Several ranks: every rank holds the whole table and writes only its own batches' rows; at the end of each
epoch the ranks add up what each changed (each particle is in one rank's batch an epoch), so every rank, and
the checkpoint, holds the same table whatever the number of ranks.
"""

import torch

from hetrec_dist.errors import UserError
from hetrec_dist.train.components import Component

DAMPING = 0.1  # Levenberg-Marquardt: the share of H's diagonal added to it


class ParticleCorrections(Component):
    """A table of n_particles x n_columns corrections (store order, float64, CPU), for the given values that
    `given_sha256` fingerprints (what the store says; `given_what` names them in errors); rows: the store rows
    of the run's particles (a run on a subset, data.subset; None: all), which alone its sizes describe.

    As a component of the training loop (train.components) it corrects each batch, steps after each forward
    once `refines(epoch)`, adds up the ranks' tables at each epoch's end (`epoch_summary`, a line for
    train.log) and writes its file in RUN after each checkpoint (`write`). A subclass sets `settings` (with
    refine and warmup_epochs) and defines corrected, step_at, epoch_summary and write."""

    given_what = "values"
    checkpoint_key = ""
    refined_what, warmup_option = "value", ""  # for the hint that the warm-up lasts the whole run

    def __init__(self, n_particles: int, n_columns: int, given_sha256: str, rows=None):
        self.given_sha256, self.rows = given_sha256, rows
        self.table = torch.zeros(n_particles, n_columns, dtype=torch.float64)
        self._synchronized = self.table.clone()

    def refines(self, epoch: int) -> bool:
        return self.settings.refine and epoch >= self.settings.warmup_epochs

    def start(self, trainer):
        warmup, epochs = self.settings.warmup_epochs, trainer.config.epochs
        if self.settings.refine and warmup >= epochs:
            trainer.hint(f"no {self.refined_what} will be refined: the warm-up ({warmup} epochs, "
                         f"{self.warmup_option}) lasts to the last epoch ({epochs})")

    def on_batch(self, trainer, batch):
        return self.corrected(batch)

    def after_forward(self, trainer, batch, out):
        if self.refines(trainer.epoch):  # at the model that made this forward
            self.step_at(trainer.model, batch, out, batch.get("noise_weights"), trainer.config.beta)

    def end_epoch(self, trainer):
        line = self.epoch_summary(trainer.world, trainer.metrics, trainer.epoch)
        if line:
            trainer.log.info(line)

    def on_checkpoint(self, trainer):
        if trainer.world.is_root:
            trainer.log.info(self.write(trainer.run_dir, trainer.store.group))

    def checkpoint_entries(self):
        return {self.checkpoint_key: self.state_dict()}

    def load_checkpoint(self, checkpoint):
        if self.checkpoint_key in checkpoint:
            self.load_state_dict(checkpoint[self.checkpoint_key])

    def run_table(self) -> torch.Tensor:
        """The rows of the table of the run's particles (all rows of a run on every particle)."""
        return self.table if self.rows is None else self.table[torch.as_tensor(self.rows, dtype=torch.long)]

    def synchronize_table(self, world) -> None:
        """Every rank's changes since the last call, added up on every rank (world: a TrainingWorld)."""
        changed = self.table - self._synchronized
        world.all_sum_(changed)
        self.table = self._synchronized + changed
        self._synchronized = self.table.clone()

    def state_dict(self) -> dict:
        return {"table": self.table.clone(), "given_sha256": self.given_sha256}

    def load_state_dict(self, state: dict) -> None:
        """Raises UserError where the state corrects another store's values (its fingerprint)."""
        check_given(state, self.given_sha256, self.given_what)
        self.table = state["table"].double().clone()
        self._synchronized = self.table.clone()


def check_given(state: dict, sha256: str, what: str) -> None:
    """Raises UserError where a checkpoint's corrections (`state`) were made for other given values than those
    fingerprinted as `sha256`."""
    if given_fingerprint(state) not in (None, sha256):
        raise UserError(f"the run refined the {what} of another store (its {what}, particles or box differ from "
                        "those the run trained on); give the store the run was trained on")


def given_fingerprint(state: dict) -> str | None:
    """The fingerprint of the given values a checkpoint's corrections belong to (None in early checkpoints)."""
    return state.get("given_sha256", state.get("given_poses_sha256"))  # earlier hetrec named it for poses


def damped_step(gradient: torch.Tensor, hessian: torch.Tensor, prior_precision: torch.Tensor,
                current: torch.Tensor, free: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The Levenberg-Marquardt step (module doc) of B particles: gradient (B x n) and Gauss-Newton matrix
    (B x n x n) over the m correction columns and then the latent's; prior_precision (m) and the current
    corrections (B x m); free: the columns solved for (a fixed column takes no step and leaves the solve).
    Returns (the step of the correction's columns, B x m, zero where the solve failed; H + P over the free
    columns, for a posterior's covariance), float64 on the CPU."""
    n_columns = current.shape[1]
    gradient, hessian = gradient.detach().double().cpu(), hessian.detach().double().cpu()
    gradient[:, :n_columns] += prior_precision * current
    hessian[:, range(n_columns), range(n_columns)] += prior_precision
    gradient, hessian = gradient[:, free], hessian[:, free][:, :, free]
    diagonal = torch.diagonal(hessian, dim1=1, dim2=2)
    # a latent the decoder ignores (beta 0, zdim > K) leaves H singular: a ridge far below each column's
    hessian = hessian + torch.diag_embed(1e-9 * diagonal + torch.finfo(torch.float64).tiny)
    damped = hessian + torch.diag_embed(DAMPING * diagonal)
    solved, failed = torch.linalg.solve_ex(damped, -gradient[..., None])
    own = [column for column in free if column < n_columns]
    change = torch.zeros_like(current, dtype=torch.float64)
    change[:, own] = solved[:, :len(own), 0]  # the latent's part is the encoder's to take
    change[failed != 0] = 0.0
    return torch.nan_to_num(change, nan=0.0, posinf=0.0, neginf=0.0), hessian


def bounded(vectors: torch.Tensor, largest: float) -> torch.Tensor:
    """vectors (B x n) scaled down to a length of at most `largest`."""
    length = vectors.norm(dim=1, keepdim=True)
    return vectors * torch.clamp(largest / length.clamp_min(1e-300), max=1.0)
