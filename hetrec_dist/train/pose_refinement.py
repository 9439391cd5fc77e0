"""Per-particle pose refinement during training (`hetrec train --refine-poses`).

Each particle has a correction: an axis-angle rotation d (radians) composed on the right of its given pose,
R @ Exp(d), and a shift s added to its given shift (pixels). After the warm-up epochs, each time a particle is
in a batch its correction takes one damped Gauss-Newton step (train.particle_corrections) on its own data term
(HetVAE.pose_normal_equations) plus a Gaussian prior of precision
    P = diag(3/prior_deg², x3, 2/prior_px², x2)  (radians, pixels):
prior_deg and prior_px are the RMS errors the given poses are thought to have (the rotation's angle, the
shift's length), spread evenly over the axes. The step is bounded to max_step_deg and max_step_px, and
composed with the correction so far. Several ranks: as train.particle_corrections.
"""

import dataclasses
import hashlib
import math

import numpy as np
import torch

from hetrec_dist.data.atomic_files import write_atomically
from hetrec_dist.data.run_folder import RunFolder
from hetrec_dist.physics.pose_derivatives import compose_axis_angle, matrices_from_axis_angle
from hetrec_dist.train.particle_corrections import ParticleCorrections, bounded, check_given, damped_step

CHECKPOINT_KEY = "pose_corrections"


@dataclasses.dataclass(frozen=True)
class RefinementSettings:
    """What train.config.TrainConfig's refine_* and pose_* settings ask for (their defaults live there, the
    shifts' in Å)."""
    refine: bool          # False: apply a checkpoint's corrections, but change them no more
    rotations: bool       # False: shifts only
    warmup_epochs: int    # epochs on the given poses before the first step
    max_step_deg: float   # the most a rotation correction moves in one step
    max_step_px: float    # the most a shift correction moves in one step (pixels)
    prior_deg: float      # the given rotations' RMS error thought likely (angle, degrees)
    prior_px: float       # the given shifts' RMS error thought likely (length, pixels)


class PoseCorrections(ParticleCorrections):
    """The corrections of n_particles (store order): rotation (N x 3, axis-angle, radians) and shift (N x 2,
    pixels at the store's box), float64 on the CPU."""

    given_what = "poses"
    checkpoint_key = CHECKPOINT_KEY
    refined_what, warmup_option = "pose", "--pose-warmup"

    def __init__(self, n_particles: int, settings: RefinementSettings, given_poses_sha256: str, rows=None):
        super().__init__(n_particles, 5, given_poses_sha256, rows)
        self.settings = settings
        self._precision_sums = torch.zeros(3, dtype=torch.float64)  # this epoch: rotation, shift, particles

    @classmethod
    def for_run(cls, trainer, store, saved):
        """The run's corrections; None where it neither refines its poses nor has refined them."""
        if not (trainer.config.refine_poses or cls.checkpoint_key in (saved or {})):
            return None
        return cls(store.n_particles, trainer.config.pose_refinement(store.pixel_size_A),
                   given_poses_sha256(store.group), trainer.rows)

    def corrected(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with each image's rotations and shifts corrected (batch["index"]: store indices)."""
        given_rotations, given_shifts = batch["rotations"], batch["shifts"]
        rotations, shifts = corrected_poses(given_rotations, given_shifts, self.table[batch["index"].cpu().long()])
        return {**batch, "rotations": rotations.to(given_rotations.dtype), "shifts": shifts.to(given_shifts.dtype)}

    def step_at(self, model, batch, out, noise_weights, beta) -> None:
        """One step for the batch's particles at the model that made `out` (its forward)."""
        self.step(batch["index"], *model.pose_normal_equations(batch, out, noise_weights, beta,
                                                                rotations=self.settings.rotations))

    def step(self, index: torch.Tensor, gradient: torch.Tensor, hessian: torch.Tensor) -> None:
        """One bounded Levenberg-Marquardt step for the particles at store `index` (B) from their data terms'
        gradient (B x n) and Gauss-Newton matrix (B x n x n) over the pose correction (5 columns) and the
        latent (the rest; HetVAE.pose_normal_equations)."""
        rows = index.cpu().long()
        current = self.table[rows]
        per_axis = ([math.radians(self.settings.prior_deg) / math.sqrt(3)] * 3
                    + [self.settings.prior_px / math.sqrt(2)] * 2)
        prior = torch.tensor(per_axis, dtype=torch.float64) ** -2
        first = 0 if self.settings.rotations else 3
        change, hessian = damped_step(gradient, hessian, prior, current, list(range(first, gradient.shape[1])))
        self._add_precision(hessian, n_rotation_columns=3 - first)
        change[:, :3] = bounded(change[:, :3], math.radians(self.settings.max_step_deg))
        change[:, 3:] = bounded(change[:, 3:], self.settings.max_step_px)
        self.table[rows, :3] = compose_axis_angle(current[:, :3], change[:, :3])
        self.table[rows, 3:] = current[:, 3:] + change[:, 3:]

    def _add_precision(self, hessian, n_rotation_columns):
        """Add each image's posterior RMS error of its rotation (degrees) and shift (pixels), from the inverse
        of its Gauss-Newton matrix with the prior (the Laplace approximation), to this epoch's sums."""
        inverse, failed = torch.linalg.inv_ex(hessian)
        covariance = torch.diagonal(inverse[failed == 0], dim1=1, dim2=2)
        rotation = torch.rad2deg(covariance[:, :n_rotation_columns].sum(1).sqrt())
        shift = covariance[:, n_rotation_columns:n_rotation_columns + 2].sum(1).sqrt()
        finite = torch.isfinite(rotation) & torch.isfinite(shift)
        self._precision_sums += torch.stack([rotation[finite].sum(), shift[finite].sum(),
                                             finite.sum().double()])

    def synchronize(self, world) -> dict[str, float]:
        """Every rank's changes since the last call, added up on every rank (world: a TrainingWorld); returns
        the mean posterior RMS error of the rotations (degrees) and shifts (pixels) the epoch's steps left,
        empty where no step was taken: how well each image determines its pose."""
        self.synchronize_table(world)
        sums = self._precision_sums.clone()
        world.all_sum_(sums)
        self._precision_sums.zero_()
        if sums[2] == 0:
            return {}
        precision = {"shift_precision_px": float(sums[1] / sums[2])}
        if self.settings.rotations:
            precision["rotation_precision_deg"] = float(sums[0] / sums[2])
        return precision

    def epoch_summary(self, world, metrics, epoch) -> str | None:
        """Synchronize the ranks' tables, show the corrections in TensorBoard; a line for train.log."""
        precision = self.synchronize(world)
        metrics.scalars({f"poses/{k}": v for k, v in {**self.sizes(), **precision}.items()}, epoch)
        if not precision:
            return None
        rotation = precision.get("rotation_precision_deg")
        return ("pose refinement: the images' posterior RMS error, "
                + ("" if rotation is None else f"rotation {rotation:.3g}°, ")
                + f"shift {precision['shift_precision_px']:.3g} px (against the model: the model's own errors are "
                "not counted)")

    def sizes(self) -> dict[str, float]:
        """The corrections' sizes over the run's particles: mean and percentiles of the rotation angle (degrees)
        and shift (pixels)."""
        table = self.run_table()
        angles = np.degrees(table[:, :3].norm(dim=1).numpy())
        shifts = table[:, 3:].norm(dim=1).numpy()
        sizes = {}
        for name, values in (("rotation_deg", angles), ("shift_px", shifts)):
            sizes[f"{name}_mean"] = float(values.mean())
            sizes.update({f"{name}_p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)})
        return sizes

    def write(self, run_dir: str, store_group) -> str:
        """RUN/poses.npz (write_poses); a line for train.log."""
        path = RunFolder(run_dir).poses
        write_poses(path, store_group["rotations"][:], store_group["shifts"][:],
                    self.table)
        sizes = self.sizes()
        return (f"pose corrections: rotation median {sizes['rotation_deg_p50']:.3g}°, 90% "
                f"{sizes['rotation_deg_p90']:.3g}°; shift median {sizes['shift_px_p50']:.3g} px, 90% "
                f"{sizes['shift_px_p90']:.3g} px ({RunFolder.name(path)})")


def corrected_poses(rotations, shifts_px, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The refined poses (float64 tensors N x 3 x 3 and N x 2 pixels, on the given poses' device) of the given
    ones (arrays or tensors) and their rows of a PoseCorrections table (N x 5, CPU)."""
    rotations, shifts_px = torch.as_tensor(rotations).double(), torch.as_tensor(shifts_px).double()
    corrections = matrices_from_axis_angle(table[:, :3].double()).to(rotations.device)
    return rotations @ corrections, shifts_px + table[:, 3:].double().to(shifts_px.device)


def write_poses(path: str, rotations: np.ndarray, shifts_px: np.ndarray, table: torch.Tensor) -> None:
    """RUN/poses.npz: `rotations` (N x 3 x 3) and `shifts` (N x 2, pixels at the store's box), the refined
    poses in store order and the store's convention, and the corrections' sizes `rotation_correction_deg`
    and `shift_correction_px` (N); written through a temporary file."""
    refined_rotations, refined_shifts = (pose.numpy() for pose in corrected_poses(rotations, shifts_px, table))

    def write(temporary):
        with open(temporary, "wb") as f:
            np.savez(f, rotations=refined_rotations.astype(np.float32), shifts=refined_shifts.astype(np.float32),
                     rotation_correction_deg=np.degrees(table[:, :3].norm(dim=1).numpy()).astype(np.float32),
                     shift_correction_px=table[:, 3:].norm(dim=1).numpy().astype(np.float32))

    write_atomically(path, write)


def given_poses_sha256(store_group) -> str:
    """A fingerprint of the poses a store gives (rotations, shifts and the box their pixels are of): corrections
    belong to these alone."""
    digest = hashlib.sha256(str(store_group.attrs["box"]).encode())
    for name in ("rotations", "shifts"):
        digest.update(np.ascontiguousarray(store_group[name][:], dtype=np.float32).tobytes())
    return digest.hexdigest()


def checkpoint_poses(checkpoint: dict, store_group) -> tuple[np.ndarray, np.ndarray] | None:
    """The refined poses (corrected_poses) of a run's checkpoint and its store (a zarr group), or None where
    the run did not refine its poses (or none yet). Raises UserError where the store is not the one whose poses
    the run refined."""
    if "pose_corrections" not in checkpoint or not checkpoint["pose_corrections"]["table"].any():
        return None
    check_given(checkpoint["pose_corrections"], given_poses_sha256(store_group), "poses")
    rotations, shifts_px = corrected_poses(store_group["rotations"][:], store_group["shifts"][:],
                                           checkpoint["pose_corrections"]["table"])
    return rotations.numpy(), shifts_px.numpy()
