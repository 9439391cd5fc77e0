"""Per-particle defocus refinement during training (`hetrec train --refine-ctf`).

Each particle has a correction δ (Å) of its given defocus: of its mean, and with astigmatism refined also
of the astigmatism's (cos 2a, sin 2a) components, so that its defocus along direction a becomes
df(a) + δ_0 + δ_1 cos 2a + δ_2 sin 2a (physics.ctf.particle_defocus_jacobians; the corrected U, V and
angle: physics.ctf.corrected_defocus). After the warm-up epochs, each time a particle is in a batch its
correction takes one damped Gauss-Newton step (train.particle_corrections) on its own data term
(HetVAE.defocus_normal_equations) plus a Gaussian prior of precision 1/prior_A² on each column: prior_A is
the RMS error the given defoci are thought to have (CTFFIND's or Gctf's per-micrograph estimate against each
particle's height in the ice). The step is bounded to max_step_A. Several ranks: as
train.particle_corrections.

The data term is weighed in each Fourier shell by the half-maps' FSC, 2 FSC / (1 + FSC) (clamped to [0, 1];
the squared correlation of the full map with the truth, Rosenthal & Henderson 2003), as relion_ctf_refine
weighs by its reference's FSC (Zivanov et al. 2018, eLife 7:e42166): a defocus shows at high resolution,
where a map has learned its own particles' noise. Fitted to that noise, each particle's defocus is confirmed
wherever it was given, and fitted to another half's noisy map it wanders (docs/benchmarks.md); the weights
keep the step to the resolutions the map knows. So the run needs half-sets (HetVAE.half_set_fsc), and the
weights follow the map as it trains (once an epoch, at its first step).
"""

import dataclasses
import hashlib

import numpy as np
import torch

from hetrec_dist.data.atomic_files import write_atomically
from hetrec_dist.data.run_folder import RunFolder
from hetrec_dist.physics.ctf import corrected_defocus
from hetrec_dist.train.particle_corrections import ParticleCorrections, bounded, check_given, damped_step

CHECKPOINT_KEY = "ctf_corrections"
DEFOCUS_COLUMNS = slice(2, 5)  # of the store's ctf array: defocus U, V (Å), angle (degrees)


@dataclasses.dataclass(frozen=True)
class CtfRefinementSettings:
    """What train.config.TrainConfig's refine_ctf, refine_astigmatism and defocus_* settings ask for."""
    refine: bool          # False: apply a checkpoint's corrections, but change them no more
    astigmatism: bool     # also the astigmatism (False: the mean defocus only)
    warmup_epochs: int    # epochs on the given defoci before the first step
    max_step_A: float     # the most a correction moves in one step
    prior_A: float        # the given defoci's RMS error thought likely


class CtfCorrections(ParticleCorrections):
    """The defocus corrections of n_particles (store order): N x 3 (Å; mean, astigmatism's cos 2a and sin 2a
    components), float64 on the CPU."""

    given_what = "CTF"
    checkpoint_key = CHECKPOINT_KEY
    refined_what, warmup_option = "defocus", "--ctf-warmup"

    def __init__(self, n_particles: int, settings: CtfRefinementSettings, given_sha256: str, rows=None):
        super().__init__(n_particles, 3, given_sha256, rows)
        self.settings = settings
        self._error_sums = torch.zeros(2, dtype=torch.float64)  # this epoch: posterior RMS errors, particles
        self._point_weights = None  # this epoch's, from the half-maps' FSC (fsc_weights)

    @classmethod
    def for_run(cls, trainer, store, saved):
        """The run's corrections; None where it neither refines its CTFs nor has refined them."""
        if not (trainer.config.refine_ctf or cls.checkpoint_key in (saved or {})):
            return None
        return cls(store.n_particles, trainer.config.ctf_refinement(), given_ctf_sha256(store.group), trainer.rows)

    def corrected(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with each image's defocus corrected (batch["index"]: store indices)."""
        ctf = batch["ctf"]
        return {**batch, "ctf": corrected_ctf(ctf, self.table[batch["index"].cpu().long()]).to(ctf.dtype)}

    def step_at(self, model, batch, out, noise_weights, beta) -> None:
        """One step for the batch's particles at the model that made `out` (its forward), its data term weighed
        by the half-maps' FSC (module doc)."""
        if self._point_weights is None:
            self._point_weights = fsc_weights(model)
        weights = self._point_weights if noise_weights is None else noise_weights * self._point_weights
        self.step(batch["index"], *model.defocus_normal_equations(batch, out, weights, self.settings.astigmatism))

    def step(self, index: torch.Tensor, gradient: torch.Tensor, hessian: torch.Tensor) -> None:
        """One bounded Levenberg-Marquardt step for the particles at store `index` (B) from their data terms'
        gradient (B x n) and Gauss-Newton matrix (B x n x n) over the defocus correction (1 column, or 3 with
        the astigmatism) and the slice's scale (the rest, whose part of the step is dropped;
        HetVAE.defocus_normal_equations)."""
        rows = index.cpu().long()
        n_own = 3 if self.settings.astigmatism else 1
        current = self.table[rows, :n_own]
        prior = torch.full((n_own,), self.settings.prior_A, dtype=torch.float64) ** -2
        change, hessian = damped_step(gradient, hessian, prior, current, list(range(gradient.shape[1])))
        inverse, failed = torch.linalg.inv_ex(hessian)
        error = torch.diagonal(inverse[failed == 0], dim1=1, dim2=2)[:, 0].sqrt()  # the mean defocus'
        error = error[torch.isfinite(error)]
        self._error_sums += torch.stack([error.sum(), torch.tensor(float(len(error)), dtype=torch.float64)])
        self.table[rows, :n_own] = current + bounded(change, self.settings.max_step_A)

    def epoch_summary(self, world, metrics, epoch) -> str | None:
        """Synchronize the ranks' tables; TensorBoard: the corrections' sizes and distribution; a line for
        train.log with the posterior RMS error of the mean defocus the epoch's steps left."""
        self.synchronize_table(world)
        self._point_weights = None  # the map has changed
        sums = self._error_sums.clone()
        world.all_sum_(sums)
        self._error_sums.zero_()
        metrics.scalars({f"ctf/{k}": v for k, v in self.sizes().items()}, epoch)
        metrics.histogram("ctf/defocus_correction_A", self.run_table()[:, 0].numpy(), epoch)
        if sums[1] == 0:
            return None
        metrics.scalars({"ctf/defocus_precision_A": float(sums[0] / sums[1])}, epoch)
        return (f"CTF refinement: the images' posterior RMS error of the mean defocus {float(sums[0] / sums[1]):.3g} "
                "Å (against the model: the model's own errors are not counted)")

    def sizes(self) -> dict[str, float]:
        """The corrections' sizes over the run's particles (Å): the mean defocus' |correction| mean and
        percentiles, and the astigmatism's."""
        sizes, table = {}, self.run_table()
        for name, values in (("defocus_A", table[:, 0].abs().numpy()),
                             ("astigmatism_A", table[:, 1:].norm(dim=1).numpy())):
            if name == "astigmatism_A" and not self.settings.astigmatism:
                continue
            sizes[f"{name}_mean"] = float(values.mean())
            sizes.update({f"{name}_p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)})
        return sizes

    def write(self, run_dir: str, store_group) -> str:
        """RUN/ctf.npz (write_ctf); a line for train.log."""
        path = RunFolder(run_dir).ctf
        write_ctf(path, store_group["ctf"][:], self.table)
        sizes = self.sizes()
        return (f"defocus corrections: median {sizes['defocus_A_p50']:.3g} Å, 90% {sizes['defocus_A_p90']:.3g} Å "
                f"({RunFolder.name(path)})")


def fsc_weights(model) -> torch.Tensor:
    """The weight (module doc) of each point of a half-set model's half-disk (P, on the model's device and in
    its dtype): 2 FSC / (1 + FSC) of the half-maps' FSC (HetVAE.half_set_fsc) in the point's shell, clamped to
    [0, 1]."""
    fsc = model.half_set_fsc().clamp(0.0, 1.0)
    shells = model.disk.coords.norm(dim=1).round().long().cpu()
    return (2 * fsc / (1 + fsc))[shells].to(model.basis.device, model.basis.dtype)


def corrected_ctf(ctf, table: torch.Tensor) -> torch.Tensor:
    """The store's ctf columns (N x 9, array or tensor) with each particle's defocus corrected by its rows of a
    CtfCorrections table (N x 3, Å; a row of zeros leaves the particle's values as given); float64, on the
    given array's device."""
    ctf = torch.as_tensor(ctf).double()
    corrected, changed = ctf.clone(), table.any(1).to(ctf.device)  # a particle never refined keeps its values
    given = ctf[changed].cpu().numpy()
    u, v, angle = corrected_defocus(given[:, 2], given[:, 3], given[:, 4], table[changed.cpu()].double().numpy())
    corrected[changed, DEFOCUS_COLUMNS] = torch.from_numpy(np.stack([u, v, angle], 1)).to(ctf.device)
    return corrected


def write_ctf(path: str, ctf: np.ndarray, table: torch.Tensor) -> None:
    """RUN/ctf.npz: `ctf` (N x 9, the store's columns, physics.ctf.CTF_COLUMNS) with the refined defoci, in
    store order, and `defocus_correction_A` (N x 3: mean, astigmatism's cos 2a and sin 2a components); written
    through a temporary file."""
    refined = corrected_ctf(ctf, table).numpy()

    def write(temporary):
        with open(temporary, "wb") as f:
            np.savez(f, ctf=refined, defocus_correction_A=table.numpy().astype(np.float32))

    write_atomically(path, write)


def given_ctf_sha256(store_group) -> str:
    """A fingerprint of the CTFs a store gives (its ctf array): corrections belong to these alone."""
    return hashlib.sha256(np.ascontiguousarray(store_group["ctf"][:], dtype=np.float32).tobytes()).hexdigest()


def checkpoint_ctf(checkpoint: dict, store_group) -> np.ndarray | None:
    """The refined CTFs (N x 9, the store's ctf columns, float64) of a run's checkpoint and its store (a zarr
    group), or None where the run did not refine its CTFs (or none yet). Raises UserError where the store is
    not the one whose CTFs the run refined."""
    if CHECKPOINT_KEY not in checkpoint or not checkpoint[CHECKPOINT_KEY]["table"].any():
        return None
    check_given(checkpoint[CHECKPOINT_KEY], given_ctf_sha256(store_group), "CTF")
    return corrected_ctf(store_group["ctf"][:], checkpoint[CHECKPOINT_KEY]["table"]).numpy()
