"""Pose conventions: every rotation in hetrec_dist is a 3x3 matrix in cryoDRGN's poses.pkl convention.

Meaning of a pose matrix R (the convention of the whole project):
    A point p = (x, y, z) of the map, in the map's own frame (x = column, y = row, z = section of an
    MRC volume, origin at the box centre), appears in the image at (u, v) = (R @ p)[:2]
    (u = column, v = row, origin at pixel D // 2). Equivalently the central slice of an image's Fourier
    coordinates k2 = (kx, ky, 0) lies at k2 @ R in the map's Fourier frame.

Sources and how they map to it:
    RELION (rot a, tilt b, psi y, degrees): with Rz(t) = [[c, -s, 0], [s, c, 0], [0, 0, 1]] and
    Ry'(t) = [[c, 0, -s], [0, 1, 0], [s, 0, c]], R = (Rz(a) Ry'(b) Rz(y))^T with the signs of entries
    (0,2), (2,0), (1,2), (2,1) flipped.
    cryoSPARC (alignments3D/pose, an axis-angle vector): R is the transpose of its rotation matrix.
    cryoDRGN poses.pkl: R as stored.
"""

import numpy as np
import numpy.typing as npt
from scipy.spatial.transform import Rotation

_RELION_FLIPPED_ENTRIES = ((0, 2), (2, 0), (1, 2), (2, 1))


def _rot_z(t):
    c, s, zero, one = np.cos(t), np.sin(t), np.zeros_like(t), np.ones_like(t)
    return np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1), np.stack([zero, zero, one], -1)], -2)


def _rot_y_prime(t):
    c, s, zero, one = np.cos(t), np.sin(t), np.zeros_like(t), np.ones_like(t)
    return np.stack([np.stack([c, zero, -s], -1), np.stack([zero, one, zero], -1), np.stack([s, zero, c], -1)], -2)


def matrices_from_relion_euler(rot_deg: npt.ArrayLike, tilt_deg: npt.ArrayLike, psi_deg: npt.ArrayLike) -> np.ndarray:
    """Pose matrices (N x 3 x 3, float64) from RELION's ZYZ Euler angles in degrees."""
    a, b, y = (np.radians(np.asarray(v, dtype=np.float64)) for v in (rot_deg, tilt_deg, psi_deg))
    matrices = np.swapaxes(_rot_z(a) @ _rot_y_prime(b) @ _rot_z(y), -1, -2).copy()
    for i, j in _RELION_FLIPPED_ENTRIES:
        matrices[..., i, j] *= -1
    return matrices


def relion_euler_from_matrices(matrices: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse of matrices_from_relion_euler: (rot, tilt, psi) in degrees, tilt in [0, 180]."""
    undone = np.array(matrices, dtype=np.float64)
    for i, j in _RELION_FLIPPED_ENTRIES:
        undone[..., i, j] *= -1
    # undone = (Rz(a) Ry'(b) Rz(y))^T, and Ry'(b) is scipy's Ry(-b): the ZYZ angles of its transpose are
    # (a, -b, y), or equally (a + 180, b, y + 180), which keeps the tilt in [0, 180]
    alpha, beta, gamma = Rotation.from_matrix(np.swapaxes(undone, -1, -2)).as_euler("ZYZ", degrees=True).T
    wrap = lambda angle: (angle + 180.0) % 360.0 - 180.0
    return wrap(alpha + 180.0), beta, wrap(gamma + 180.0)


def matrices_from_cryosparc_pose(pose_axis_angle: npt.ArrayLike) -> np.ndarray:
    """Pose matrices from cryoSPARC's alignments3D/pose axis-angle vectors (N x 3, radians)."""
    rotation = Rotation.from_rotvec(np.asarray(pose_axis_angle, dtype=np.float64)).as_matrix()
    return np.swapaxes(rotation, -1, -2).copy()


def cryosparc_pose_from_matrices(matrices: npt.ArrayLike) -> np.ndarray:
    """The inverse of matrices_from_cryosparc_pose (used to write .cs files)."""
    return Rotation.from_matrix(np.swapaxes(np.asarray(matrices, dtype=np.float64), -1, -2)).as_rotvec()


def random_relion_euler(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Euler angles (degrees) of n rotations drawn uniformly from SO(3)."""
    rot = rng.uniform(-180.0, 180.0, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(-180.0, 180.0, n)
    return rot, tilt, psi
