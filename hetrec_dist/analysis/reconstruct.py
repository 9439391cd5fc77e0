"""A model-free, gold-standard reconstruction of a set of particles from their images, poses and CTFs, as
RELION's relion_reconstruct and cryoDRGN's backproject_voxel make one: two half-maps, the map of both, and
their FSC.

Each half-set's images are inserted into a Fourier volume sampled twice as finely as the images' (PADDING,
RELION's default) by the adjoint of the model's slice operator (physics.projector: trilinear weights,
Friedel-flipped points; on the CPU a compiled loop, physics/slice_kernels.c `insert`, that a test holds equal):

    N = sum_i T_i^T (CTF_i Y_i),   W = sum_i T_i^T CTF_i^2

(Y_i: the image's Fourier transform, moved back by its shift). A half-map's coefficients are
N / (W + lambda_s), lambda_s = 1 / (SSNR_s mean_s(1 / W)) on shell s, where SSNR_s = FSC_s / (1 - FSC_s) of
the two half-maps: the Wiener filter of RELION's reconstruction, with the signal power tau^2 estimated from
the half-maps' FSC (Scheres 2012, J. Mol. Biol. 415:406, eqs. 13-17), repeated a few times from a small
start. The map of both half-sets is (N_1 + N_2) / (W_1 + W_2 + lambda_s). Trilinear insertion multiplies the
real-space map by sinc^2 along each axis (the transform of the insertion kernel); the maps are divided by it
(RELION's gridding correction). Maps are in the images' units: an image is pixel_size_A x the map's line
integral (physics.maps), as `hetrec simulate` renders them and as the model's maps are.
"""

import dataclasses
import functools

import numpy as np
import torch
from tqdm import tqdm

from hetrec_dist.analysis.fsc import fsc_summary
from hetrec_dist.data.reader import ChunkShuffledParticles, ParticleStore
from hetrec_dist.physics.compiled import kernels_for
from hetrec_dist.physics.ctf import particle_ctfs
from hetrec_dist.physics.fourier_grid import HalfBall, HalfDisk
from hetrec_dist.physics.maps import half_ball_to_map
from hetrec_dist.physics.projector import basis_gradient, slice_geometry

PADDING = 2
WIENER_ROUNDS = 3
MEMORY_BUDGET_BYTES = 4e9  # of sums held at once by insert_groups
_FSC_RANGE = (1e-3, 0.999)  # SSNR from 1e-3 (shells without signal: the map there is ~0) to ~1000


@dataclasses.dataclass
class Reconstruction:
    """half_maps (2 x D^3, [z, y, x]), map (D^3), fsc (analysis.fsc.fsc_summary of the half-maps), particles
    (how many in each half-set); maps in the images' units, centred at voxel D // 2."""
    half_maps: np.ndarray
    map: np.ndarray
    fsc: dict
    particles: tuple[int, int]


class Insertion:
    """The sums N and W (module doc) of both half-sets, stacked as the model stacks half-set bases: half-set
    h's voxel v at row (h - 1) V + v of the padded half-ball's V voxels."""

    def __init__(self, box: int, pixel_size_A: float, device="cpu"):
        self.box, self.pixel_size_A = box, pixel_size_A
        disk, half_ball = _grids(box)
        self.disk, self.half_ball = disk.to(device), half_ball.to(device)
        self.points = self.disk.coords * PADDING
        n_rows = 2 * self.half_ball.n_voxels
        # each row's N (re, im), W, and a 0 that makes (re, im) pairs of the compiled insert's values
        self.sums = torch.zeros(n_rows, 4, dtype=torch.float64, device=device)
        self.particles = [0, 0]

    def nbytes(self) -> int:
        return self.sums.nbytes

    def insert(self, images, rotations, shifts_px, ctf, half_sets, ctf_envelope=None):
        """Add images (B x D x D) at their poses (B x 3 x 3, B x 2 pixels), CTFs (B x 9, the store's ctf
        columns; ctf_envelope B x 2 or None) and half-sets (B, 1 or 2)."""
        device = self.sums.device
        images = images.to(device, torch.float32)
        spectra = self.disk.image_spectra(images, shifts_px.to(device))
        ctfs = particle_ctfs(ctf.to(device, torch.float32), self.disk.coords, self.box, self.pixel_size_A,
                             None if ctf_envelope is None else ctf_envelope.to(device))
        half_sets = half_sets.to(device).long()
        row_offsets = ((half_sets - 1) * self.half_ball.n_voxels).to(torch.int32)
        values = torch.stack([*torch.view_as_real(ctfs * spectra).unbind(-1), ctfs ** 2, torch.zeros_like(ctfs)], -1)
        rotations = rotations.to(device, torch.float32)
        kernels = kernels_for(values)
        if kernels is not None:
            k3 = (self.points @ rotations[:, :2, :]).contiguous()
            kernels.insert(k3, self.half_ball.lookup, self.half_ball.extent, row_offsets, values.contiguous(),
                           self.sums)
        else:  # the adjoint of the model's slice operator (PyTorch's sparse products; GPUs)
            geometry = slice_geometry(rotations, self.points, self.half_ball, row_offsets, n_stacked=2)
            ones = torch.ones(len(images), 1, device=device)
            for columns in (slice(0, 2), slice(2, 4)):
                added = basis_gradient(geometry, values[..., columns].contiguous(), ones)
                self.sums[:, columns].index_add_(0, added.indices()[0], added.values().double())
        for h in (1, 2):
            self.particles[h - 1] += int((half_sets == h).sum())

    def sum_over(self, world) -> None:
        """Sum the ranks' insertions (world: an object with all_sum_(tensor) of CPU tensors, e.g. a
        TrainingWorld)."""
        device = self.sums.device
        sums, counts = self.sums.cpu(), torch.tensor(self.particles, dtype=torch.float64)
        for tensor in (sums, counts):
            world.all_sum_(tensor)
        self.sums = sums.to(device)
        self.particles = [int(c) for c in counts.tolist()]

    def reconstruct(self) -> Reconstruction:
        """The half-maps, the map of both and their FSC (module doc)."""
        n = self.half_ball.n_voxels
        numerators = torch.view_as_complex(self.sums[:, :2].contiguous()).view(2, n)
        weights = self.sums[:, 2].view(2, n)
        shells = torch.round(self.half_ball.coords.double().norm(dim=1) / PADDING).long()
        n_shells = self.box // 2 + 1
        inside = shells < n_shells
        shells = shells.clamp(max=n_shells - 1)
        regulariser = _shell_mean(weights.mean(0), shells, n_shells) * 1e-3  # a start: most of each shell kept
        for _ in range(WIENER_ROUNDS):
            halves = numerators / (weights + regulariser[shells])
            regulariser = _wiener_regulariser(halves, weights, shells, n_shells)
        halves = (numerators / (weights + regulariser[shells])) * inside
        both = (numerators.sum(0) / (weights.sum(0) + regulariser[shells])) * inside
        maps = [self._to_map(coefficients) for coefficients in (*halves, both)]
        return Reconstruction(np.stack(maps[:2]), maps[2], fsc_summary(maps[0], maps[1], self.pixel_size_A),
                              tuple(self.particles))

    def _to_map(self, coefficients):
        """The real map (D^3, float32) of padded half-ball coefficients, gridding-corrected and cropped."""
        padded_box = PADDING * self.box
        # a map padded with zeros to PADDING x the box has coefficients 1/PADDING of the box's (physics.maps)
        volume = half_ball_to_map(coefficients.cpu() / PADDING, self.half_ball.to("cpu"), padded_box,
                                  self.pixel_size_A).numpy()
        start = padded_box // 2 - self.box // 2
        crop = slice(start, start + self.box)
        volume = volume[crop, crop, crop]
        offsets = np.arange(self.box) - self.box // 2
        kernel = np.sinc(offsets / padded_box) ** 2  # the trilinear kernel's transform along one axis
        return (volume / (kernel[:, None, None] * kernel[None, :, None] * kernel[None, None, :])).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _grids(box):
    """(the images' half-disk, the padded half-ball) of a box: built once (at box 256 the ball takes seconds)."""
    radius = box / 2 - 1  # as the model's: every Fourier point of the image but the corners
    return HalfDisk.build(box, radius), HalfBall.build(PADDING * radius)


def _shell_mean(values, shells, n_shells):
    total = torch.bincount(shells, values, minlength=n_shells)
    count = torch.bincount(shells, minlength=n_shells).clamp(min=1)
    return total / count


def _wiener_regulariser(halves, weights, shells, n_shells):
    """lambda per shell (module doc) from the FSC of the two half-maps' coefficients (2 x V complex)."""
    cross = torch.bincount(shells, (halves[0] * halves[1].conj()).real, minlength=n_shells)
    power = [torch.bincount(shells, half.abs() ** 2, minlength=n_shells) for half in halves]
    fsc = (cross / torch.sqrt((power[0] * power[1]).clamp(min=1e-300))).clamp(*_FSC_RANGE)
    ssnr = fsc / (1 - fsc)
    seen = weights > 0
    inverse_weight = torch.where(seen, 1 / weights.clamp(min=1e-300), 0.0)
    mean_inverse = (torch.bincount(shells, inverse_weight[0], minlength=n_shells)
                    + torch.bincount(shells, inverse_weight[1], minlength=n_shells)) / torch.bincount(
        shells, seen.sum(0).double(), minlength=n_shells).clamp(min=1)
    return 1 / (ssnr * mean_inverse).clamp(min=1e-300)


def insert_particles(store_path, half_sets, rows=None, poses=None, batch_size=256, device="cpu", rank=0,
                     world_size=1, show_progress=True, ctf=None) -> Insertion:
    """This rank's share of the particles of a store (rows: sorted store rows, data.subset; None: all) inserted.
    half_sets (N, 1 or 2, store order); poses: (rotations N x 3 x 3, shifts N x 2 pixels) in store order to use
    instead of the store's (a run's refined poses), or None; ctf: the CTFs (N x 9, the store's columns) to use
    instead of the store's (a run's refined CTFs), or None."""
    data = ChunkShuffledParticles(store_path, batch_size=batch_size, rank=rank, world_size=world_size,
                                  shuffle=False, rows=rows)
    store = ParticleStore(store_path)
    insertion = Insertion(store.box, store.pixel_size_A, device)
    _insert_all(data, [insertion], np.zeros(store.n_particles, np.int64), half_sets, poses, ctf, show_progress)
    return insertion


def insert_groups(store_path, groups, half_sets, poses=None, batch_size=256, device="cpu", show_progress=True,
                  budget_bytes=MEMORY_BUDGET_BYTES, ctf=None) -> list[Insertion]:
    """One Insertion for each group of particles (groups: sorted store rows each, disjoint), the store read once
    for as many groups as budget_bytes of sums hold at a time (half_sets, poses, ctf: as insert_particles)."""
    store = ParticleStore(store_path)
    size = Insertion(store.box, store.pixel_size_A, "meta").nbytes()
    per_pass = max(1, int(budget_bytes // size))
    insertions = []
    for first in range(0, len(groups), per_pass):
        chosen = groups[first:first + per_pass]
        group_of = np.full(store.n_particles, -1, np.int64)
        for index, rows in enumerate(chosen):
            if (group_of[rows] >= 0).any():
                raise ValueError("insert_groups takes disjoint groups of particles")
            group_of[rows] = index
        data = ChunkShuffledParticles(store_path, batch_size=batch_size, shuffle=False,
                                      rows=np.flatnonzero(group_of >= 0))
        batch_insertions = [Insertion(store.box, store.pixel_size_A, device) for _ in chosen]
        _insert_all(data, batch_insertions, group_of, half_sets, poses, ctf, show_progress)
        insertions += batch_insertions
    return insertions


def _insert_all(data, insertions, group_of, half_sets, poses, ctf, show_progress):
    """Every batch of `data` inserted into insertions[group_of[its store row]]."""
    half_sets, group_of = torch.as_tensor(np.asarray(half_sets, np.int64)), torch.as_tensor(group_of)
    with tqdm(total=data.rank_particles(), unit="img", desc="reconstruct", disable=not show_progress,
              dynamic_ncols=True) as progress:
        for batch in data:
            index = batch["index"].long()
            rotations, shifts, ctfs = batch["rotations"], batch["shifts"], batch["ctf"]
            if poses is not None:
                rotations, shifts = (torch.as_tensor(pose[index.numpy()]) for pose in poses)
            if ctf is not None:
                ctfs = torch.as_tensor(ctf[index.numpy()])
            groups, envelope = group_of[index], batch.get("ctf_envelope")
            for group in torch.unique(groups).tolist():
                mine = groups == group
                insertions[group].insert(batch["images"][mine], rotations[mine], shifts[mine], ctfs[mine],
                                         half_sets[index[mine]], None if envelope is None else envelope[mine])
            progress.update(len(index))
