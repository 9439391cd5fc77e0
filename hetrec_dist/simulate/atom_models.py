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


# The built-in assembly's states: which of its four peripheral subunits (A, B, C, D) each has, and its share of
# the particles (%), from the complete assembly down to a rare early intermediate, as in an assembly pathway.
ASSEMBLY_STATES = "1111:25,1110:20,1101:15,1011:12,0111:10,1100:8,0011:6,1000:4"


@dataclasses.dataclass
class Assembly:
    """A compositional object: a core and peripheral subunits, each present or absent by the particle's state.

    core (C x 3) and subunits (one A_j x 3 array each) in Angstrom, in the map frame; states (S x J, bool): the
    subunits each state has; populations (S, summing to 1). Every atom has weight 1 and width sigma_A."""
    core: np.ndarray
    subunits: list
    sigma_A: float
    states: np.ndarray
    populations: np.ndarray

    @property
    def start(self) -> np.ndarray:
        """Every atom (A x 3): the core's, then each subunit's in order."""
        return np.concatenate([self.core, *self.subunits])

    @property
    def weights(self) -> np.ndarray:
        return np.ones(len(self.start))

    def _owners(self):
        """Each atom's part: 0 for the core, j for subunit j (1-based)."""
        return np.repeat(np.arange(len(self.subunits) + 1), [len(self.core)] + [len(s) for s in self.subunits])

    def state_weights(self, states) -> np.ndarray:
        """Atom weights (n x A) of particles in `states` (n, indices into self.states): 0 for absent subunits."""
        present = np.column_stack([np.ones(len(states), bool), self.states[np.asarray(states)]])
        return present[:, self._owners()].astype(np.float64)

    def part_weights(self, part) -> np.ndarray:
        """Atom weights (A) of one part alone: 0 the core, j subunit j."""
        return (self._owners() == part).astype(np.float64)

    def loose_subunit(self, part) -> np.ndarray:
        """Every atom's position (A x 3) with subunit `part` moved to the box centre (a loose subunit, picked)."""
        positions = self.start.copy()
        mine = self._owners() == part
        positions[mine] -= positions[mine].mean(axis=0)
        return positions


def parse_states(text, n_subunits=4):
    """'1111:25,1110:20,…' (which subunits each state has, and its share in %) -> (states S x J bool,
    populations S summing to 1); UserError (one line) for anything else."""
    states, shares = [], []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        pattern, _, share = item.partition(":")
        try:
            value = float(share)
        except ValueError:
            value = float("nan")
        if len(pattern) != n_subunits or set(pattern) - {"0", "1"} or not np.isfinite(value) or value <= 0:
            raise UserError(f"--states {item!r}: give each state as {n_subunits} digits 0 or 1 (which subunits it "
                            "has) and its share of the particles, e.g. 1110:20")
        states.append([c == "1" for c in pattern])
        shares.append(value)
    if len(states) < 2:
        raise UserError(f"--states {text!r}: give at least two states, separated by commas")
    if len({tuple(s) for s in states}) < len(states):
        raise UserError(f"--states {text!r}: a state is given twice")
    return np.array(states), np.array(shares) / sum(shares)


def assembly_model(states_text=ASSEMBLY_STATES):
    """The built-in assembly: a core of 70 atoms and four peripheral subunits of 25 atoms each (A, B, C, D, each
    of its own shape) around it, not related by symmetry, in the states of `states_text` (parse_states)."""
    rng = np.random.default_rng(20261206)  # part of the model's definition, not a run's seed
    core = rng.normal(size=(70, 3)) * [12.0, 10.0, 8.0]
    sites = np.array([[27.0, 8.0, 4.0], [-10.0, 27.0, -6.0], [-14.0, -20.0, 17.0], [4.0, -9.0, -27.0]])
    spreads = np.array([[6.0, 4.0, 4.0], [4.0, 6.0, 4.0], [5.0, 5.0, 3.5], [4.0, 4.0, 6.5]])
    subunits = [site + rng.normal(size=(25, 3)) * spread for site, spread in zip(sites, spreads)]
    centre = np.concatenate([core, *subunits]).mean(axis=0)
    states, populations = parse_states(states_text, len(subunits))
    return Assembly(core - centre, [s - centre for s in subunits], 3.0, states, populations)
