import numpy as np

from hetrec_dist.physics.rotations import (
    cryosparc_pose_from_matrices,
    matrices_from_cryosparc_pose,
    matrices_from_relion_euler,
    random_relion_euler,
)


def cryodrgn_style_relion_matrix(rot, tilt, psi):
    """The same convention written the other way round: Rz(psi) Ry'(tilt) Rz(rot), entries (0,1), (1,0),
    (1,2), (2,1) negated (cryoDRGN's utils.R_from_relion)."""
    a, b, y = np.radians([rot, tilt, psi])
    rz = lambda t: np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    ry = np.array([[np.cos(b), 0, -np.sin(b)], [0, 1, 0], [np.sin(b), 0, np.cos(b)]])
    m = rz(y) @ ry @ rz(a)
    for i, j in ((0, 1), (1, 0), (1, 2), (2, 1)):
        m[i, j] *= -1
    return m


def test_relion_matrix_literal_values():
    np.testing.assert_allclose(matrices_from_relion_euler([90.0], [0.0], [0.0])[0],
                               [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-12)
    # tilt alone turns the viewing direction (row 2) about y
    np.testing.assert_allclose(matrices_from_relion_euler([0.0], [90.0], [0.0])[0],
                               [[0, 0, -1], [0, 1, 0], [1, 0, 0]], atol=1e-12)


def test_relion_matrices_match_the_other_formulation_and_are_rotations():
    rng = np.random.default_rng(0)
    angles = np.stack(random_relion_euler(50, rng), axis=1)
    matrices = matrices_from_relion_euler(*angles.T)
    for m, (rot, tilt, psi) in zip(matrices, angles):
        np.testing.assert_allclose(m, cryodrgn_style_relion_matrix(rot, tilt, psi), atol=1e-12)
    np.testing.assert_allclose(matrices @ np.swapaxes(matrices, 1, 2), np.broadcast_to(np.eye(3), (50, 3, 3)),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(matrices), 1.0, atol=1e-12)


def test_random_euler_angles_are_uniform_on_so3():
    matrices = matrices_from_relion_euler(*random_relion_euler(40000, np.random.default_rng(1)))
    # For the Haar measure every entry has mean 0 and variance 1/3.
    np.testing.assert_allclose(matrices.mean(axis=0), 0.0, atol=0.015)
    np.testing.assert_allclose((matrices ** 2).mean(axis=0), 1 / 3, atol=0.015)


def test_cryosparc_pose_is_the_transposed_axis_angle_rotation():
    angle = np.pi / 2
    matrix = matrices_from_cryosparc_pose([[0.0, 0.0, angle]])[0]  # +90 degrees about z, transposed
    np.testing.assert_allclose(matrix, [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-12)
    matrices = matrices_from_relion_euler(*random_relion_euler(20, np.random.default_rng(2)))
    round_trip = matrices_from_cryosparc_pose(cryosparc_pose_from_matrices(matrices))
    np.testing.assert_allclose(round_trip, matrices, atol=1e-12)
