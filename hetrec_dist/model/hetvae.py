"""The sparse Fourier structural-basis VAE (Kimanius, Jamali & Scheres, NeurIPS 2022).

image -> encoder -> z ~ N(mu, exp(logvar)) -> linear decoder -> weights w = (1, w_1..w_K) over K basis
volumes and a mean -> central slice of sum_k w_k basis_k at the image's pose -> x CTF -> compared with the
image's shift-corrected Fourier transform.

Loss per image: 0.5 * sum_p c_p |data_p - CTF_p slice_p|^2 + beta * KL(q(z|x) || N(0, I)), with c_p the
half-disk weights (unit noise variance: images are divided by the store's pixel std), averaged over the
batch and divided by sum_p c_p (so the data term reads as an error per Fourier coefficient).
"""

import dataclasses

import torch
from torch import nn

from hetrec_dist.model.encoder import ResidualMLPEncoder
from hetrec_dist.physics.ctf import particle_ctfs, particle_defocus_jacobians
from hetrec_dist.physics.fourier_grid import HalfBall, HalfDisk, squared_magnitude
from hetrec_dist.physics.maps import EnvelopeMask, SupportProjector, half_ball_to_map, soft_sphere_mask
from hetrec_dist.physics.pose_derivatives import rotation_jacobian, slice_spatial_gradient
from hetrec_dist.physics.projector import SliceFactors, project, project_with_factors, slice_geometry


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """Everything that fixes the parameter shapes; a checkpoint only loads into the same shape. The defaults
    live in train.config.TrainConfig, in Å (TrainConfig.model_shape(box, pixel_size_A))."""
    box: int
    zdim: int
    n_basis: int
    encoder_hidden: int
    encoder_blocks: int
    encoder_radius: float   # fraction of the box: Fourier radius of the encoder input
    max_radius: float       # fraction of the box: radius of the basis and the loss (< 0.5 of D)
    n_half_sets: int = 1    # 2: a basis per half-set (half-set training), its rows stacked after the first's


class HetVAE(nn.Module):
    def __init__(self, shape: ModelShape, pixel_size_A: float, image_std: float = 1.0, init_scale: float = 1e-2,
                 half_sets_join_A: float | None = None):
        """half_sets_join_A: with half-sets, the resolution (Å) coarser than which the halves' bases are one
        (join_half_sets; None: never joined, as runs trained before the join was added)."""
        super().__init__()
        self.shape, self.pixel_size_A, self.image_std = shape, pixel_size_A, image_std
        self.half_sets_join_A = half_sets_join_A if shape.n_half_sets == 2 else None
        radius = min(shape.max_radius * shape.box, shape.box / 2 - 1)
        self.half_ball = HalfBall.build(radius)
        self.disk = HalfDisk.build(shape.box, radius)
        self.register_buffer("encoder_points", self.disk.coords.norm(dim=1) <= shape.encoder_radius * shape.box,
                             persistent=False)
        # rows of the first half-set's basis that join_half_sets joins with the second's: the voxels within
        # join_radius of the origin (none for a model with one basis or no join)
        joined = (torch.zeros(0, dtype=torch.long) if self.join_radius is None else
                  torch.nonzero((self.half_ball.coords ** 2).sum(1) <= self.join_radius ** 2).squeeze(1))
        self.register_buffer("joined_rows", joined, persistent=False)
        self.encoder = ResidualMLPEncoder(2 * int(self.encoder_points.sum()), shape.zdim, shape.encoder_hidden,
                                          shape.encoder_blocks)
        self.decoder = nn.Linear(shape.zdim, shape.n_basis)
        # small random volumes, so that the weights get a gradient from the first step (torch's global RNG); the
        # same for both half-sets, as RELION starts both halves from one reference, so that they break the
        # symmetry alike (see join_half_sets): what they learn after comes from each half's own particles
        start = torch.randn(self.half_ball.n_voxels, 2 * (shape.n_basis + 1)) * init_scale
        self.basis = nn.Parameter(start.repeat(shape.n_half_sets, 1))

    def _apply(self, fn, *args, **kwargs):  # .to(device) moves the grids too
        super()._apply(fn, *args, **kwargs)
        self.half_ball, self.disk = self.half_ball.to(self.basis.device), self.disk.to(self.basis.device)
        return self

    def dense_modules(self) -> nn.ModuleDict:
        """Every parameter but the basis (which gets a sparse gradient and its own optimizer)."""
        return nn.ModuleDict({"encoder": self.encoder, "decoder": self.decoder})

    def basis_weights(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones_like(z[:, :1]), self.decoder(z)], dim=1)

    def _spectra(self, images: torch.Tensor, shifts_px: torch.Tensor | None = None) -> torch.Tensor:
        """Half-disk Fourier coefficients (B x P, complex) of images (B x D x D, centre at D // 2), moved back by
        shifts_px where given (HalfDisk.image_spectra), normalised by the store's pixel standard deviation."""
        return self.disk.image_spectra(images, shifts_px, self.image_std)

    def observed_spectra(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Half-disk Fourier coefficients of the normalised images, shift-corrected (B x P, complex)."""
        return self._spectra(batch["images"], batch["shifts"])

    def background_spectra(self, batch: dict[str, torch.Tensor], mask_diameter_A: float | None = None
                           ) -> tuple[torch.Tensor, float]:
        """(half-disk coefficients of the images outside a soft circle of the particle's diameter (None: 90% of
        the box), B x P; the mean of the squared mask kept): what model.noise takes the noise power from."""
        box = self.shape.box
        radius_px = 0.45 * box if mask_diameter_A is None else mask_diameter_A / (2 * self.pixel_size_A)
        inside = soft_sphere_mask(box, radius_px, 0.05 * box, ndim=2).to(self.basis.device)
        outside = torch.fft.fftshift(1 - inside)  # centred at D // 2, as the images are
        spectra = self._spectra(batch["images"].to(self.basis.device) * outside)
        return spectra, float((outside ** 2).mean())

    def ctf(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """B x P: each image's CTF on the half-disk, with its envelope (scale, B-factor) where the batch has one
        (data.reader gives "ctf_envelope" only for stores where some particle's differs from 1, 0)."""
        return particle_ctfs(batch["ctf"].to(self.basis.dtype), self.disk.coords, self.shape.box, self.pixel_size_A,
                             batch.get("ctf_envelope"))

    def encode(self, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        points = observed[:, self.encoder_points]
        return self.encoder(torch.cat([points.real, points.imag], dim=1))

    def forward(self, batch: dict[str, torch.Tensor], beta: float = 1.0, noise: torch.Tensor | None = None,
                basis_factors: bool = False, noise_weights: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor | float | SliceFactors]:
        """Loss terms and what the logger shows: dict of loss, data, kl, touched_fraction, the residual power
        |data - model|² of every half-disk point (B x P, detached), predictions (CTF x slice), the slices
        (detached) and their geometry.
        noise (B x zdim): the reparametrisation's standard normal draws (training mode; drawn here if None).
        basis_factors: leave the basis out of autograd and return out["factors"] (see project_with_factors).
        noise_weights (B x P): the likelihood weight of each point (model.noise.NoiseSpectrum); None: white noise."""
        observed = self.observed_spectra(batch)
        mu, logvar = self.encode(observed)
        if noise is None:
            noise = torch.randn_like(mu)
        z = mu + noise * torch.exp(0.5 * logvar) if self.training else mu
        rotations = batch["rotations"].to(self.basis.dtype)
        geometry = slice_geometry(rotations, self.disk.coords, self.half_ball, self._row_offsets(batch),
                                  self.shape.n_half_sets)
        out = {}
        if basis_factors:
            slices, out["factors"] = project_with_factors(self.basis, self.basis_weights(z), geometry, rotations)
        else:
            slices = project(self.basis, self.basis_weights(z), geometry)
        slices = torch.view_as_complex(slices)
        predicted = self.ctf(batch) * slices
        weights = self.disk.weights
        residual_power = squared_magnitude(observed - predicted)
        weighted = residual_power if noise_weights is None else residual_power * noise_weights
        data = 0.5 * (weighted * weights).sum(1)
        kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)
        norm = weights.sum()
        return {**out, "loss": (data + beta * kl).mean() / norm, "data": data.mean() / norm, "kl": kl.mean(),
                "touched_fraction": len(geometry.touched_rows) / geometry.n_rows,
                "residual_power": residual_power.detach(), "mu": mu, "observed": observed, "predicted": predicted,
                "slices": slices.detach(), "geometry": geometry}

    @torch.no_grad()
    def pose_normal_equations(self, batch: dict[str, torch.Tensor], out: dict,
                              noise_weights: torch.Tensor | None = None, beta: float = 1.0,
                              rotations: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(gradient g, B x n; Gauss-Newton matrix H, B x n x n), n = 5 + zdim, of each image's data term
        0.5 sum_p c_p n_p |data_p - CTF_p S_p|² plus the latent prior beta |z|² / 2, with respect to a correction
        (d_x, d_y, d_z, s_x, s_y) of its pose, the rotation R @ Exp(d) (d axis-angle, radians) and the shift
        plus s (pixels), and to its latent z, at d = s = 0 and z = its latent mean. The latent columns let a
        pose step leave to the latent what a change of conformation explains better (pose_refinement).
        out: this batch's forward(); noise_weights: n_p as forward took them (None: 1); rotations False: the
        rotation's columns are zero (shifts only: its costly spatial derivative is not computed). Derivatives:
        physics.pose_derivatives."""
        geometry, observed, mu = out["geometry"], out["observed"], out["mu"]
        n_images, n_points = geometry.flipped.shape
        weights = self.basis_weights(mu)
        components = geometry.interpolate(self.basis).view(n_images, n_points, 2, -1)  # dS/dw, (re, im)

        def complex_slices(values):  # (re, im) on dim 2 -> complex, conjugated where the point was flipped
            values = torch.complex(values[:, :, 0], values[:, :, 1])
            return torch.where(geometry.flipped.view(n_images, n_points, *[1] * (values.dim() - 2)),
                               values.conj(), values)

        slices = complex_slices(torch.einsum("bpck,bk->bpc", components, weights))
        ctf = self.ctf(batch)
        if rotations:
            poses = batch["rotations"].to(self.basis.dtype)
            positions = self.disk.coords.to(poses.dtype) @ poses[:, :2, :]
            spatial = slice_spatial_gradient(self.basis, weights, geometry)
            along_rotation = -ctf[..., None] * torch.view_as_complex(rotation_jacobian(spatial, positions))
        else:
            along_rotation = slices.new_zeros(n_images, n_points, 3)
        # |data e^(-i phi(s)) - CTF S| = |data - CTF S e^(i phi(s))|: the model's phase moves instead of the
        # data's, for the same gradient and a Gauss-Newton matrix free of the data's noise
        frequencies = -2j * torch.pi * self.disk.coords / self.shape.box  # P x 2: d(-phi)/ds
        along_shift = (ctf * slices)[..., None] * frequencies
        along_latent = -ctf[..., None] * complex_slices(components[..., 1:] @ self.decoder.weight)
        jacobian = torch.cat([along_rotation, along_shift, along_latent], -1)  # d(data - CTF S)/d(d, s, z)
        weight = self.disk.weights if noise_weights is None else self.disk.weights * noise_weights
        weighted = weight[..., None] * jacobian
        residual = observed - ctf * slices
        gradient = (residual.conj()[..., None] * weighted).real.sum(1)
        hessian = torch.einsum("bpi,bpj->bij", weighted.conj(), jacobian).real
        gradient[:, 5:] += beta * mu
        hessian[:, 5:, 5:] += beta * torch.eye(self.shape.zdim, dtype=hessian.dtype, device=hessian.device)
        return gradient, hessian

    @torch.no_grad()
    def defocus_normal_equations(self, batch: dict[str, torch.Tensor], out: dict,
                                 noise_weights: torch.Tensor | None = None, astigmatism: bool = False
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(gradient g, B x n; Gauss-Newton matrix H, B x n x n), n = m + 2, of each image's data term
        0.5 sum_p c_p n_p |data_p - CTF_p S_p (1 + a + b r_p²)|² with respect to a change of its defocus (Å; m = 1:
        its mean, m = 3 with astigmatism: physics.ctf.particle_defocus_jacobians) and to a scale of its slice,
        a + b r² (r: the point's radius over the half-disk's), at a = b = 0, the batch's CTF and the slices S of out
        (this batch's forward(): its latent held, as a defocus changes the CTF's rings and not the
        conformation; solving for the latent too moved the defoci alike, docs/benchmarks.md). The scale is what
        RELION refines per particle as rlnCtfScalefactor and rlnCtfBfactor: solved for with the defocus, it
        takes up what a model's amplitudes lack at high resolution, which alone biased the defoci by a
        shared ~90 Å (a smaller slice fits best where the CTF is larger, docs/benchmarks.md).
        noise_weights: n_p as forward took them (None: 1)."""
        along_defocus = particle_defocus_jacobians(batch["ctf"].to(self.basis.dtype), self.disk.coords,
                                                   self.shape.box, self.pixel_size_A, batch.get("ctf_envelope"),
                                                   astigmatism)
        radius_squared = (self.disk.coords.to(self.basis.dtype) ** 2).sum(1) / self.disk.radius ** 2
        along_scale = out["predicted"].detach()[..., None] * torch.stack([torch.ones_like(radius_squared),
                                                                          radius_squared], -1)
        jacobian = -torch.cat([along_defocus * out["slices"][..., None], along_scale], -1)
        weight = self.disk.weights if noise_weights is None else self.disk.weights * noise_weights
        weighted = weight[..., None] * jacobian
        gradient = ((out["observed"] - out["predicted"]).detach().conj()[..., None] * weighted).real.sum(1)
        return gradient, torch.einsum("bpi,bpj->bij", weighted.conj(), jacobian).real

    def _row_offsets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Where each image's half-set basis starts (B,), from batch["half_set"] (1 or 2, RELION's
        rlnRandomSubset); None for a model with one basis. Raises ValueError where a half-set model gets
        images without their half-set."""
        if self.shape.n_half_sets == 1:
            return None
        if "half_set" not in batch:
            raise ValueError("a half-set model needs each image's half-set (batch['half_set'], 1 or 2)")
        return (batch["half_set"].to(self.basis.device, torch.int32) - 1) * self.half_ball.n_voxels

    @property
    def join_radius(self) -> float | None:
        """The Fourier radius (voxels) within which the half-sets' bases are one, box x pixel size /
        half_sets_join_A (join_half_sets); None for a model with one basis or never joined."""
        if self.half_sets_join_A is None:
            return None
        return self.shape.box * self.pixel_size_A / self.half_sets_join_A

    @torch.no_grad()
    def join_half_sets(self) -> None:
        """Set both half-sets' basis coefficients at resolutions coarser than half_sets_join_A (joined_rows) to
        their mean.

        Each half's basis alone can learn the latent's meaning with any sign or mix of its components (only the
        shared encoder and decoder tie the halves), and at some seeds it does: one half's maps move along a
        latent axis as the other's move back, and the latents of the two halves' particles no longer line up
        (docs/benchmarks.md, issue 32). Joined at low resolution the halves learn one meaning, as RELION joins
        its half-maps below --low_resol_join_halves (40 Å) so that their orientations cannot diverge. The
        half-maps' FSC is 1 there by construction: a gold-standard resolution is one finer than
        half_sets_join_A (analysis.half_maps)."""
        rows = self.joined_rows
        if len(rows):
            other = rows + self.half_ball.n_voxels
            joined = (self.basis[rows] + self.basis[other]) / 2
            self.basis[rows], self.basis[other] = joined, joined

    def support_projector(self, mask_diameter_A: float | None = None,
                          envelope_threshold: float = EnvelopeMask.threshold) -> SupportProjector:
        """What confines the basis to a sphere of mask_diameter_A (None: 90% of the box), soft edge 5% of the
        box outside it, or to that sphere times the envelope of the model's density (see SupportProjector)."""
        box = self.shape.box
        radius_px = 0.45 * box if mask_diameter_A is None else mask_diameter_A / (2 * self.pixel_size_A)
        return SupportProjector(self.half_ball, box, self.pixel_size_A, radius_px, edge_px=0.05 * box,
                                envelope=EnvelopeMask(threshold=envelope_threshold))

    def density_directions(self) -> torch.Tensor:
        """(K+1) x (1 + zdim): the mean map's basis weights (1, decoder bias) and, for each latent axis, how the
        weights change along it (0, decoder column): the maps of the model over the latent prior N(0, I) have
        these as their mean and principal directions."""
        mean = torch.cat([self.basis.new_ones(1), self.decoder.bias])
        axes = torch.cat([self.basis.new_zeros(1, self.shape.zdim), self.decoder.weight])
        return torch.cat([mean[:, None], axes], dim=1).detach()

    @torch.no_grad()
    def half_set_fsc(self) -> torch.Tensor:
        """The FSC of the two half-sets' mean maps (the maps at the latent prior's mean) in each Fourier shell
        (float64, shells 0 .. the half-ball's largest; a voxel's shell is round(|k|), as analysis.fsc bins a
        map's): what each resolution of a half's map can be trusted to. Voxels of x > 0 count twice, for their
        Friedel mates, so that the FSC is that of the full maps. Raises ValueError for a model without
        half-sets."""
        if self.shape.n_half_sets != 2:
            raise ValueError("the half-maps' FSC needs a model with half-sets")
        weights = self.density_directions()[:, 0].to(torch.complex128)
        first, second = (self.components(h).to(torch.complex128) @ weights for h in (1, 2))
        coords = self.half_ball.coords.to(self.basis.device)
        shells = coords.double().norm(dim=1).round().long()
        friedel = torch.where(coords[:, 0] > 0, 2.0, 1.0).to(torch.float64)

        def shell_sums(values):
            return torch.zeros(int(shells.max()) + 1, dtype=torch.float64, device=shells.device).index_add_(
                0, shells, friedel * values)

        products = shell_sums((first * second.conj()).real)
        powers = shell_sums(first.abs() ** 2) * shell_sums(second.abs() ** 2)
        return (products / powers.sqrt().clamp_min(1e-300)).cpu()

    def _half_rows(self, half_set: int) -> slice:
        if half_set not in range(1, self.shape.n_half_sets + 1):
            raise ValueError(f"half-set {half_set} of a model with {self.shape.n_half_sets} basis(es)")
        n_voxels = self.half_ball.n_voxels
        return slice((half_set - 1) * n_voxels, half_set * n_voxels)

    def components(self, half_set: int | None = None) -> torch.Tensor:
        """The K+1 volumes as half-ball coefficients, V x (K+1) complex: column 0 the mean, k the k-th basis
        volume. (The parameter `basis` holds them as V x 2(K+1) reals: the real parts, then the imaginary.)
        half_set (1 or 2): that half's basis; None: the mean of the halves' (the only one without half-sets)."""
        if half_set is None:
            return sum(self.components(h) for h in range(1, self.shape.n_half_sets + 1)) / self.shape.n_half_sets
        parts = self.basis[self._half_rows(half_set)].view(-1, 2, self.shape.n_basis + 1)
        return torch.complex(parts[:, 0], parts[:, 1])

    @torch.no_grad()
    def set_components(self, coefficients: torch.Tensor, half_set: int = 1) -> None:
        """Replace half_set's K+1 volumes by V x (K+1) complex half-ball coefficients (components()' layout)."""
        self.basis[self._half_rows(half_set)] = torch.cat([coefficients.real, coefficients.imag], dim=1)

    @torch.no_grad()
    def confine_basis(self, projector: SupportProjector, follow_envelope: bool = False) -> None:
        """Replace every basis volume by its projection `projector` (a support_projector()); follow_envelope:
        first shrink the projector's mask to the envelope of the model's maps (see SupportProjector). Each
        half-set's basis is confined on its own (the envelope of its own maps), so no half sees the other; then
        their coarse coefficients are joined again (join_half_sets)."""
        directions = self.density_directions() if follow_envelope else None
        for half_set in range(1, self.shape.n_half_sets + 1):
            self.set_components(projector(self.components(half_set), directions), half_set)
        self.join_half_sets()  # confined apart, the halves' coarse coefficients differ a little again

    def volume(self, z: torch.Tensor, half_set: int | None = None) -> torch.Tensor:
        """The map [z, y, x] (D^3, in the images' original units) for one latent z (zdim,); half_set (1 or 2):
        that half's map; None: the mean of the half-maps (the only map without half-sets)."""
        weights = self.basis_weights(z[None].to(self.basis.dtype))[0]
        components = self.components(half_set)
        coefficients = components @ weights.to(components.dtype)
        return half_ball_to_map(coefficients, self.half_ball, self.shape.box, self.pixel_size_A) * self.image_std

    def half_disk_to_image(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Real-space images (B x D x D, origin at D//2) of half-disk coefficients, for display."""
        box = self.shape.box
        spectra = torch.zeros(coefficients.shape[0], box * (box // 2 + 1), dtype=coefficients.dtype,
                              device=coefficients.device)
        spectra[:, self.disk.flat_index] = coefficients
        images = torch.fft.irfft2(spectra.view(-1, box, box // 2 + 1), s=(box, box), norm="ortho")
        return torch.fft.fftshift(images, dim=(-2, -1))
