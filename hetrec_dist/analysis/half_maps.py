"""The gold-standard resolution of a half-set run's map at a latent point.

A run trained with --half-sets has a basis per half-set and one encoder and decoder. At a latent z the decoder
gives one set of weights w(z); each half's map is sum_k w_k(z) basis_k of its own basis, which only its own
particles' gradients ever changed, but for the resolutions coarser than half_sets_join_A (40 Å by default),
where the halves are one (HetVAE.join_half_sets) so that they learn one meaning of the latent space. So the
two half-maps at z share the latent space and their lowest resolutions but not their noise, and their Fourier
shell correlation, with FSC = 0.143 as the resolution (Rosenthal & Henderson 2003; RELION,
cryoSPARC), measures the map at z as single-particle analysis measures a consensus map. The full map at z is
the mean of the two (HetVAE.volume).
"""

import numpy as np
import torch

from hetrec_dist.analysis.fsc import fsc_summary
from hetrec_dist.errors import UserError

GOLD_STANDARD_THRESHOLD = 0.143
# Below this half_set_agreement the halves are taken to disagree on the latent's meaning. Measured on the
# hinge at box 48 to 128 (docs/benchmarks.md, issue 32): 0.58-1.00 in runs whose halves agreed (the lowest
# joined at 20 Å, at SNR 0.01), -0.97 in one whose halves learned the motion with opposite signs.
LEAST_AGREEMENT = 0.3


def require_half_sets(model, run="the run"):
    if model.shape.n_half_sets != 2:
        raise UserError(f"{run} was trained without half-sets: it has one map per latent, no half-maps; train "
                        "with --half-sets for half-maps and their resolution")


def model_limit_A(model):
    """The finest resolution (Å) the model's maps hold: that of the first FSC shell past its basis."""
    basis_shell = int(np.floor(model.half_ball.radius + 1e-6)) + 1
    return model.shape.box * model.pixel_size_A / min(basis_shell, model.shape.box // 2)


@torch.no_grad()
def half_maps(model, latent):
    """(half-map 1, half-map 2), each D x D x D float64 in the maps' units, at one latent (zdim,)."""
    latent = torch.as_tensor(np.asarray(latent, dtype=np.float32)).to(model.basis.device)
    return tuple(model.volume(latent, half_set).cpu().numpy().astype(np.float64) for half_set in (1, 2))


def latent_resolution(model, latent):
    """fsc_summary of the half-maps at `latent` (curve, resolution_0.5_A, resolution_0.143_A, mean_fsc), with
    limit_A (model_limit_A) and at_limit: whether the FSC stays above 0.143 as far as the model reaches, so
    that the resolution is a bound, not a measurement; joined_A (the model's half_sets_join_A, None if never
    joined) and at_join: whether the FSC falls below 0.143 within a shell past the joined resolutions, where
    the halves' agreement is not independent evidence."""
    summary = fsc_summary(*half_maps(model, latent), model.pixel_size_A)
    limit, radius = model_limit_A(model), model.join_radius
    box_A = model.shape.box * model.pixel_size_A
    at_join = radius is not None and summary["resolution_0.143_A"] >= box_A / (radius + 1) * (1 - 1e-6)
    return {**summary, "limit_A": limit, "at_limit": bool(summary["resolution_0.143_A"] <= limit * (1 + 1e-6)),
            "joined_A": model.half_sets_join_A, "at_join": bool(at_join)}


def describe_resolution(result):
    """'6.21 Å', '4.00 Å (the model's limit: …)' or '40.0 Å (not gold-standard: …)'."""
    line = f"{result['resolution_0.143_A']:.2f} Å"
    if result.get("at_join"):
        return line + (f" (not gold-standard: the half-maps are one at resolutions coarser than "
                       f"{result['joined_A']:g} Å, and agree no further)")
    return line + " (the model's limit: a finer max_resolution_A may show more)" if result["at_limit"] else line


@torch.no_grad()
def half_set_agreement(model, z):
    """How alike the two half-sets' maps change along the latents' first principal direction (the one PCA,
    the traversals and k-means see first): the correlation of the two changes of basis coefficients for a
    step of one standard deviation along it, over the octave of resolutions just finer than the halves' join
    (from half_sets_join_A to half of it; 40 Å for a run never joined), where each half learned from its own
    particles alone and the change of a conformation is still strong. Near 1 where the halves agree what the
    latent means; 0 or below where they do not, and the latents of one half's particles do not line up with
    the other's (the motion a run should show is lost). z: N x zdim latents of the run."""
    require_half_sets(model)
    from hetrec_dist.analysis.latent import pca

    fitted = pca(np.asarray(z, dtype=np.float64))
    step = fitted.components[0] * np.sqrt(max(fitted.explained_variance[0], 0.0))
    weights = model.decoder.weight @ torch.as_tensor(step, dtype=model.basis.dtype, device=model.basis.device)
    joined = model.join_radius or model.shape.box * model.pixel_size_A / 40.0  # Fourier radius, voxels
    radii = model.half_ball.coords.to(model.basis.dtype).norm(dim=1)
    band = (radii > joined) & (radii <= 2 * joined)
    first, second = (model.components(half_set)[band, 1:] @ weights.to(torch.complex64) for half_set in (1, 2))
    norm = float(torch.linalg.vector_norm(first) * torch.linalg.vector_norm(second))
    return float(torch.vdot(first, second).real) / norm if norm > 0 else 0.0


def agreement_line(agreement):
    """(whether the halves agree, a line for the user) about half_set_agreement's value."""
    line = f"half-set agreement along the latent's first principal direction: {agreement:.2f}"
    if agreement >= LEAST_AGREEMENT:
        return True, line
    return False, (f"{line}; the half-sets disagree on what the latent space means (their maps change unlike "
                   "along it), so the latents of one half's particles may not line up with the other's and the "
                   "motion may be lost: train again with another --seed, or a finer half_sets_join_A in a "
                   "--config file (README, 'Half-sets')")
