"""Objects made of Gaussian atoms whose positions move along a conformational coordinate c in [0, 1].

Positions are in Angstrom in the map frame (x, y, z), centred on the origin (the box centre).
"""

import dataclasses

import numpy as np

from hetrec_dist.errors import UserError


@dataclasses.dataclass
class AtomModel:
    """Atoms at `start` (c = 0) moving linearly to `end` (c = 1) or, with `hinge`, rotating about it."""
    start: np.ndarray          # A x 3, Angstrom
    weights: np.ndarray        # A, scattering weight of each atom
    sigma_A: float             # Gaussian width of every atom
    end: np.ndarray | None = None
    hinge_atoms: np.ndarray | None = None     # mask of atoms that swing about the hinge
    hinge_angle_deg: float = 0.0

    def positions(self, coordinates):
        """Atom positions for each coordinate: len(c) x A x 3."""
        c = np.asarray(coordinates, dtype=np.float64)[:, None, None]
        if self.end is not None:
            return self.start[None] + c * (self.end - self.start)[None]
        positions = np.repeat(self.start[None], len(c), axis=0)
        if self.hinge_atoms is not None:
            angle = np.radians(self.hinge_angle_deg) * c[:, 0, 0]
            cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
            moving = positions[:, self.hinge_atoms]
            x, y = moving[..., 0], moving[..., 1]
            moving[..., 0], moving[..., 1] = cos * x - sin * y, sin * x + cos * y
            positions[:, self.hinge_atoms] = moving
        return positions


def hinge_model():
    """The built-in object: two domains joined at the origin; the second swings 60 degrees about z.
    It is chiral (a knob off the plane), so a mirrored reconstruction is detectable."""
    rng = np.random.default_rng(20221128)  # part of the model's definition, not a run's seed
    fixed = rng.normal(size=(60, 3)) * [14.0, 8.0, 8.0] + [-20.0, 0.0, 0.0]
    swinging = rng.normal(size=(40, 3)) * [12.0, 6.0, 6.0] + [20.0, 0.0, 0.0]
    knob = rng.normal(size=(10, 3)) * 3.0 + [-25.0, 10.0, 14.0]
    start = np.concatenate([fixed, swinging, knob])
    hinge_atoms = np.zeros(len(start), dtype=bool)
    hinge_atoms[60:100] = True
    start -= start.mean(axis=0)
    return AtomModel(start=start, weights=np.ones(len(start)), sigma_A=3.0, hinge_atoms=hinge_atoms,
                     hinge_angle_deg=60.0)


def _read_atoms(path):
    import gemmi

    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as err:
        raise UserError(f"{path}: not a readable PDB/mmCIF file ({err})") from None
    structure.remove_hydrogens()
    atoms = [(atom.pos.x, atom.pos.y, atom.pos.z, atom.element.atomic_number)
             for chain in structure[0] for residue in chain for atom in residue]
    if not atoms:
        raise UserError(f"{path}: no atoms in its first model")
    atoms = np.asarray(atoms, dtype=np.float64)
    return atoms[:, :3], atoms[:, 3]


def structure_model(path, second_path=None, sigma_A=1.5):
    """Atoms of a PDB/mmCIF file (weights = atomic numbers), optionally moving to a second conformation
    with the same atoms in the same order."""
    start, weights = _read_atoms(path)
    end = None
    if second_path is not None:
        end, _ = _read_atoms(second_path)
        if end.shape != start.shape:
            raise UserError(f"{second_path}: has {len(end)} atoms but {path} has {len(start)}; "
                            "the two conformations need the same atoms")
    centre = start.mean(axis=0)
    return AtomModel(start=start - centre, weights=weights, sigma_A=sigma_A,
                     end=None if end is None else end - centre)
