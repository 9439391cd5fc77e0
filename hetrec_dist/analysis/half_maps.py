"""The gold-standard resolution of a half-set run's map at a latent point.

A run trained with --half-sets has a basis per half-set and one encoder and decoder. At a latent z the decoder
gives one set of weights w(z); each half's map is sum_k w_k(z) basis_k of its own basis, which only its own
particles' gradients ever changed. So the two half-maps at z share the latent space but not their noise, and
their Fourier shell correlation, with FSC = 0.143 as the resolution (Rosenthal & Henderson 2003; RELION,
cryoSPARC), measures the map at z as single-particle analysis measures a consensus map. The full map at z is
the mean of the two (HetVAE.volume).
"""

import numpy as np
import torch

from hetrec_dist.analysis.fsc import fsc_summary
from hetrec_dist.errors import UserError

GOLD_STANDARD_THRESHOLD = 0.143


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
    that the resolution is a bound, not a measurement."""
    summary = fsc_summary(*half_maps(model, latent), model.pixel_size_A)
    limit = model_limit_A(model)
    return {**summary, "limit_A": limit, "at_limit": bool(summary["resolution_0.143_A"] <= limit * (1 + 1e-6))}


def describe_resolution(result):
    """'6.21 Å', or '4.00 Å (the model's limit: train with a finer max_resolution_A)'."""
    line = f"{result['resolution_0.143_A']:.2f} Å"
    return line + " (the model's limit: a finer max_resolution_A may show more)" if result["at_limit"] else line
