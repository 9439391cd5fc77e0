"""The latent landscape: PCA, k-means, traversals; bounded memory and time at a million particles."""

import dataclasses

import numpy as np
import scipy.sparse
from scipy.cluster.vq import kmeans2
from scipy.sparse.csgraph import dijkstra

from hetrec_dist.errors import UserError

KMEANS_FIT_SAMPLE = 200_000  # k-means is fitted on at most this many particles, then all are assigned
PATH_GRAPH_SAMPLE = 50_000  # particles the graph of a path is built on (a seeded sample with both ends)


@dataclasses.dataclass
class Pca:
    mean: np.ndarray          # zdim
    components: np.ndarray    # zdim x zdim, rows are principal axes
    explained_variance: np.ndarray

    def project(self, z):
        return (z - self.mean) @ self.components.T


def pca(z):
    """PCA from the zdim x zdim covariance (one pass over z, whatever N)."""
    mean = z.mean(axis=0, dtype=np.float64)
    covariance = np.cov(z, rowvar=False, dtype=np.float64).reshape(z.shape[1], z.shape[1])
    variance, axes = np.linalg.eigh(covariance)
    order = np.argsort(variance)[::-1]
    components = axes[:, order].T
    components *= np.sign(components[np.arange(len(components)), np.abs(components).argmax(1)])[:, None]
    return Pca(mean, components, variance[order])


# One latent direction dominates when the first principal axis holds at least this many times the variance of
# the second. Measured on simulated hinges at SNR 0.05-0.1 (docs/benchmarks.md): runs whose PC1 held the
# motion (|Spearman| 0.77-0.97) had ratios 1.25-6.7; runs whose latents hid it (0.06-0.65) had 1.05-1.17.
DOMINANCE_RATIO = 1.2


def latent_spread(z):
    """How the latent variance spreads over directions: (share of each principal axis, largest first,
    whether one direction dominates (DOMINANCE_RATIO), a line that says so for the user)."""
    shares = np.clip(np.linalg.eigvalsh(np.cov(z, rowvar=False, dtype=np.float64).reshape(z.shape[1], -1))[::-1],
                     0, None)
    shares = shares / max(shares.sum(), 1e-300)
    dominant = len(shares) == 1 or shares[0] >= DOMINANCE_RATIO * shares[1]
    listed = ", ".join(f"{100 * s:.0f}%" for s in shares)
    line = f"latent variance over its {len(shares)} principal directions: {listed}"
    if not dominant:
        line += (f"; no direction dominates (PC1 holds less than {DOMINANCE_RATIO:g} x PC2), so PCA, k-means and "
                 "the traversals may not show the motion: see README, 'When the latent space looks wrong'")
    return shares, dominant, line


def assign(z, centres, block=100_000):
    """Index of the nearest centre for every row of z, in blocks (memory bounded by block x k)."""
    labels = np.empty(len(z), dtype=np.int32)
    for start in range(0, len(z), block):
        part = z[start:start + block]
        distances = ((part[:, None, :] - centres[None]) ** 2).sum(-1)
        labels[start:start + block] = distances.argmin(1)
    return labels


def kmeans(z, k, seed=0):
    """k-means centres (fitted on a seeded sample of at most KMEANS_FIT_SAMPLE rows) and every row's label."""
    rng = np.random.default_rng(seed)
    sample = z if len(z) <= KMEANS_FIT_SAMPLE else z[rng.choice(len(z), KMEANS_FIT_SAMPLE, replace=False)]
    centres, _ = kmeans2(sample.astype(np.float64), k, minit="++", seed=seed)
    labels = assign(z, centres)
    return centres, labels


def nearest_particles(z, points):
    """For each point, the index of the particle whose latent is closest (maps at real particles' z)."""
    return np.array([int(((z - p) ** 2).sum(1).argmin()) for p in points])


def places_from_sample(z, rows, xy):
    """Every particle's place in a 2-D embedding made of a sample (UMAP's: rows of z, their places xy): its own
    where sampled, else that of its nearest sampled neighbour in the latent space (N x 2)."""
    from sklearn.neighbors import NearestNeighbors

    if len(rows) == len(z):
        return xy[np.argsort(rows)]
    nearest = NearestNeighbors(n_neighbors=1, n_jobs=-1).fit(z[rows]).kneighbors(z, return_distance=False)[:, 0]
    places = xy[nearest]
    places[rows] = xy
    return places


def traversal(z, fitted, component, n_points=10):
    """Latents along one principal axis, from its 5th to its 95th percentile, through the mean."""
    coordinate = fitted.project(z)[:, component]
    steps = np.percentile(coordinate, np.linspace(5, 95, n_points))
    return fitted.mean + steps[:, None] * fitted.components[component][None]


def graph_path(z, start, end, n_neighbors=10, seed=0):
    """The particles (indices, `start` first, `end` last) along the shortest path between two particles through
    a graph of the latents that joins each particle to its n_neighbors nearest, edges weighted by distance: a
    path that stays where the data are, as cryoDRGN's graph traversal (Zhong et al., Nature Methods 2021).
    The graph holds a seeded sample of PATH_GRAPH_SAMPLE particles at most, with both ends. Raises UserError
    where the graph does not join them."""
    from sklearn.neighbors import NearestNeighbors

    sample = np.random.default_rng(seed).choice(len(z), min(len(z), PATH_GRAPH_SAMPLE), replace=False)
    sample = np.union1d(sample, [start, end])
    k = min(n_neighbors + 1, len(sample))
    distances, neighbours = NearestNeighbors(n_neighbors=k).fit(z[sample]).kneighbors(z[sample])
    rows = np.repeat(np.arange(len(sample)), k - 1)
    # + a tiny length: particles with the same latent stay joined (a sparse graph's zero is no edge)
    graph = scipy.sparse.csr_matrix((distances[:, 1:].ravel() + 1e-12, (rows, neighbours[:, 1:].ravel())),
                                    shape=(len(sample),) * 2)
    source, target = np.searchsorted(sample, [start, end])
    lengths, predecessors = dijkstra(graph, directed=False, indices=source, return_predecessors=True)
    if not np.isfinite(lengths[target]):
        raise UserError(f"particles {start} and {end} lie in parts of the latent space that no chain of "
                        f"{n_neighbors} nearest neighbours joins; choose ends in one region")
    path = [target]
    while path[-1] != source:
        path.append(predecessors[path[-1]])
    return sample[np.array(path[::-1])]


def evenly_along(z, path, n_points=10):
    """Up to n_points particles of `path` (indices) at evenly spaced distances along it, both ends included,
    each once (a path of fewer particles gives them all)."""
    steps = np.linalg.norm(np.diff(z[path], axis=0), axis=1)
    travelled = np.concatenate([[0.0], np.cumsum(steps)])
    chosen = np.searchsorted(travelled, np.linspace(0, travelled[-1], n_points), side="left")
    return path[np.unique(np.clip(chosen, 0, len(path) - 1))]
