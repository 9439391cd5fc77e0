"""Scores of a run on a compositional dataset (`hetrec simulate --assembly`): how true to each state's
composition its maps are, and how well its latent space separates the states and the junk.

- Occupancy: a map M is fitted, by least squares inside a sphere of 0.45 x the box and after a Gaussian low-pass
  to LOWPASS_A (the scores concern which subunits are there, not fine detail), as a C + sum_j b_j S_j + c, C the
  core's true map and S_j subunit j's; subunit j's occupancy is b_j / a (1: as strong as the core, 0: absent).
- State separation: k-means with as many clusters as states, against the true states (adjusted Rand index);
  neighbour purity, the share of each particle's NEIGHBOURS nearest latents that are of its own state (all
  intact particles; and the rarest state's).
- Junk separation: each particle's junk score is the share of junk among its NEIGHBOURS nearest latents (itself
  left out); the area under the ROC curve of that score for junk against intact particles (0.5: by chance, 1:
  apart).
"""

import numpy as np
from scipy.ndimage import gaussian_filter

from hetrec_dist.analysis.fsc import soft_sphere

LOWPASS_A = 10.0
NEIGHBOURS = 10


def _lowpassed(volume, pixel_size_A):
    # a Gaussian of standard deviation sigma halves the amplitude at 1 / (pi sigma sqrt(2 / ln 2))
    sigma_px = LOWPASS_A / (np.pi * np.sqrt(2 / np.log(2))) / pixel_size_A
    return gaussian_filter(np.asarray(volume, np.float64), sigma_px, mode="wrap")


def occupancies(volume, core, subunits, pixel_size_A):
    """Each subunit's occupancy (J) in `volume` (module doc); maps D^3 of one box and pixel size."""
    inside = soft_sphere(volume.shape[0]) > 0.5
    columns = [_lowpassed(m, pixel_size_A)[inside] for m in (core, *subunits)]
    design = np.column_stack([*columns, np.ones(int(inside.sum()))])
    coefficients = np.linalg.lstsq(design, _lowpassed(volume, pixel_size_A)[inside], rcond=None)[0]
    return coefficients[1:-1] / coefficients[0]


def neighbours(z, k=NEIGHBOURS):
    """Each row's k nearest other rows of z (N x k indices), itself left out."""
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z, return_distance=False)[:, 1:]


def neighbour_purity(z, states):
    """(share of each particle's nearest latents of its own state, over all particles; the same for the rarest
    state's particles)."""
    same = (states[neighbours(z)] == states[:, None]).mean(1)
    rarest = np.bincount(states).astype(float)
    rarest[rarest == 0] = np.inf
    return float(same.mean()), float(same[states == rarest.argmin()].mean())


def junk_scores(z, junk):
    """Each particle's share of junk among its nearest latents (itself left out)."""
    return junk[neighbours(z)].mean(1)


def state_separation(z, states, seed=0):
    """{ari, neighbour_purity, rarest_state_purity} of intact particles' latents against their states."""
    from sklearn.metrics import adjusted_rand_score

    from hetrec_dist.analysis.latent import kmeans

    labels = kmeans(z, len(np.unique(states)), seed)[1]
    purity, rarest = neighbour_purity(z, states)
    return {"ari": float(adjusted_rand_score(states, labels)), "neighbour_purity": purity,
            "rarest_state_purity": rarest}


def junk_separation(z, junk):
    """The ROC AUC of junk_scores for junk against intact particles (module doc)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(junk, junk_scores(z, junk)))


def composition_summary(per_state):
    """{min occupancy of a present subunit, max of an absent one} over states (per_state: dicts with
    'subunits' ('1101') and 'occupancy' (J))."""
    present, absent = [], []
    for state in per_state:
        for has, value in zip(state["subunits"], state["occupancy"]):
            (present if has == "1" else absent).append(value)
    return {"min_present_occupancy": float(min(present)) if present else None,
            "max_absent_occupancy": float(max(absent)) if absent else None}
