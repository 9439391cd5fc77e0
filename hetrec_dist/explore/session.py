"""What `hetrec explore` serves, apart from the page: a run's latents in 2-D views, the model's map at any
particle's latent, its isosurface and sections, polygon selections written as subsets, paths between two
particles, and the half-maps' FSC at a latent.

A map at a latent z is a linear combination of the basis: map(z) = sum_k w_k(z) map_k, with w(z) the decoder's
weights (HetVAE.basis_weights) and map_k the real-space map of the k-th basis volume (the Fourier transform is
linear). The K+1 real-space maps are computed once, at start-up; a map is then K+1 multiply-adds a voxel.
"""

import contextlib
import dataclasses
import os
import re
import threading
from collections import OrderedDict

import numpy as np
import torch

from hetrec_dist.analysis.half_maps import latent_resolution
from hetrec_dist.analysis.latent import evenly_along, graph_path
from hetrec_dist.analysis.maps import central_sections, chimerax_level
from hetrec_dist.analysis.reconstruct import insert_particles
from hetrec_dist.analysis.select import write_subset
from hetrec_dist.data.atomic_files import refuse_link, write_text
from hetrec_dist.data.half_sets import reconstruction_half_sets
from hetrec_dist.data.map_files import write_map
from hetrec_dist.data.store import open_store
from hetrec_dist.data.subset import read_index_file
from hetrec_dist.errors import UserError
from hetrec_dist.physics.maps import half_ball_to_map

MAX_SHOWN = 100_000  # points drawn in the page (a seeded sample above it); selections count every particle
PATH_MAPS = 10  # maps along a path
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}[A-Za-z0-9_-]|[A-Za-z0-9]")  # no . at either end


@dataclasses.dataclass
class Colouring:
    """Values to colour the particles by: (N,) floats; kind 'categorical', 'continuous' or 'cyclic' (degrees)."""
    values: np.ndarray
    kind: str = "continuous"


@dataclasses.dataclass
class RunRecords:
    """What a subset file needs of a run (cli.run_files.run_particle_records): the store's attributes, each
    stored particle's row in the input's metadata (store N), half-sets (store N or None), refined poses
    ((rotations, shifts_px), store N, or None) and refined CTFs (store N x 9, or None); rows: the store rows of
    the run's particles (None: all)."""
    store_attrs: dict
    source_rows: np.ndarray
    half_sets: np.ndarray | None = None
    poses: tuple | None = None
    rows: np.ndarray | None = None
    ctf: np.ndarray | None = None


@torch.no_grad()
def real_space_basis(model, half_set=None):
    """The K+1 basis volumes as real-space maps, (K+1) x D x D x D float32 in the maps' units (HetVAE.volume's),
    of half-set `half_set` (None: the mean of the halves)."""
    components = model.components(half_set)
    maps = [half_ball_to_map(components[:, k], model.half_ball, model.shape.box, model.pixel_size_A)
            for k in range(components.shape[1])]
    return (torch.stack(maps) * model.image_std).float()


class MapMaker:
    """The model's map at a latent from the precomputed real-space basis (module doc)."""

    def __init__(self, model, cache_bytes=256 * 2**20):
        self.model = model
        self.basis = real_space_basis(model)  # (K+1) D^3 float32: 143 MB at box 128 and K = 16, 1.1 GB at 256
        self._cache = OrderedDict()  # the last maps shown (a click, then its threshold and smoothing)
        self._cache_size = max(2, cache_bytes // (4 * model.shape.box ** 3))
        self._lock = threading.Lock()  # the page's callbacks run in the server's threads

    @torch.no_grad()
    def map_at(self, latent):
        """D x D x D float32 map [z, y, x] at one latent (zdim,)."""
        key = np.asarray(latent, dtype=np.float32).tobytes()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        z = torch.as_tensor(np.asarray(latent, dtype=np.float32))[None].to(self.basis.device)
        weights = self.model.basis_weights(z)[0].to(self.basis.dtype)
        volume = torch.tensordot(weights, self.basis, dims=1).cpu().numpy()
        with self._lock:
            self._cache[key] = volume
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return volume


def mesh(volume, level, pixel_size_A, step=1):
    """The isosurface of `volume` at `level`: (vertices V x 3 as x, y, z in Å from the box's corner, faces
    F x 3 vertex indices), by marching cubes (Lewiner et al. 2003, scikit-image) over every `step`-th voxel.
    A level outside the map's values gives no faces."""
    from skimage.measure import marching_cubes

    if not volume.min() < level < volume.max():
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32)
    vertices, faces, _, _ = marching_cubes(volume, level, step_size=step, allow_degenerate=False)
    return (vertices[:, ::-1] * pixel_size_A).astype(np.float32), faces.astype(np.int32)


def mesh_step(box):
    """Marching cubes over every voxel up to box 96, else over every (box // 64)-th: the page's surface stays
    a few 10^4 faces at any box (the sections show finer detail)."""
    return 1 if box <= 96 else box // 64


def sections(volume, max_size=128):
    """The three central sections of a [z, y, x] map: normal to z, y and x (each D x D; averaged over 2 x 2
    pixels until at most max_size across, as the page draws them)."""
    cuts = central_sections(volume)
    while cuts[0].shape[0] > max_size and cuts[0].shape[0] % 2 == 0:
        cuts = [cut.reshape(cut.shape[0] // 2, 2, cut.shape[1] // 2, 2).mean((1, 3)) for cut in cuts]
    return cuts


def mrc_bytes(volume, pixel_size_A):
    """An MRC file of `volume` (as hetrec's maps: data.map_files.write_map), as bytes for a download."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "map.mrc")
        write_map(path, volume, pixel_size_A)
        with open(path, "rb") as f:
            return f.read()


def in_polygon(xy, xs, ys):
    """Which rows of xy (N x 2) lie inside the polygon of vertices (xs, ys) (a lasso), as sorted indices."""
    from matplotlib.path import Path

    if len(xs) < 3:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(Path(np.column_stack([xs, ys])).contains_points(xy))


def in_box(xy, x_range, y_range):
    """Which rows of xy lie inside a box (a box selection), as sorted indices."""
    (x0, x1), (y0, y1) = sorted(x_range), sorted(y_range)
    return np.flatnonzero((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))


def check_name(name):
    """A selection's name as a file stem: letters, digits, _ . -; a UserError otherwise."""
    name = (name or "").strip()
    if not NAME.fullmatch(name):
        raise UserError(f"selection name {name!r}: use letters, digits, _ . - (up to 64; no . at either end, no - "
                        "at the start)")
    if os.path.splitext(name)[1].lower() in (".pkl", ".txt", ".star", ".cs"):
        raise UserError(f"selection name {name!r}: give it without an extension; .pkl, .txt and .star or .cs are "
                        "written beside each other")
    return name


def write_selection(folder, name, positions, records, overwrite=False):
    """Write the run's particles at `positions` (indices into the run's latents, z.npy order) as
    folder/NAME.pkl and NAME.txt (their 0-based rows in the input: cryoDRGN's --ind, `hetrec train --ind`) and
    as NAME.star or NAME.cs like the input (analysis.select.write_subset: all columns, the run's half-sets,
    refined poses and CTFs). Returns (written paths, a note or None where the STAR/.cs could not be written)."""
    name = check_name(name)
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        raise UserError("the selection is empty; lasso or box-select particles first")
    store_rows = positions if records.rows is None else np.asarray(records.rows)[positions]
    make_folder(folder, 2)  # OUT/selections
    source = records.store_attrs["sources"]["metadata"][0]["path"]
    extension = os.path.splitext(source)[1].lower()
    paths = [os.path.join(folder, f"{name}{e}") for e in (".pkl", ".txt")]
    subset_path = os.path.join(folder, name + extension) if extension in (".star", ".cs") else None
    taken = [p for p in paths + [subset_path] if p and os.path.exists(p)]
    if taken and not overwrite:
        raise UserError(f"{taken[0]} exists; choose another name")
    write_subset(store_rows, records.store_attrs, records.source_rows, paths[0])
    input_rows = np.asarray(records.source_rows, dtype=np.int64)[store_rows]
    write_text(paths[1], "".join(f"{row}\n" for row in input_rows))
    note = None
    if subset_path:
        try:
            write_subset(store_rows, records.store_attrs, records.source_rows, subset_path, records.half_sets,
                         records.poses, records.ctf)
            paths.append(subset_path)
        except UserError as error:
            note = f"no {extension} subset: {error}"
    return paths, note


def make_folder(folder, levels):
    """Make `folder`, refusing a symbolic link at it or at the levels - 1 folders above it that explore owns
    (RUN/explore/...): one planted there would take the writes elsewhere (docs/security.md)."""
    path = os.path.abspath(folder)
    for _ in range(levels):
        refuse_link(path)
        path = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)


@contextlib.contextmanager
def cannot_write_as_user_error(out_dir):
    """An OSError writing under out_dir (read-only, a file in the way, a full disk) as a UserError naming it."""
    try:
        yield
    except OSError as error:
        raise UserError(f"cannot write in {out_dir} ({error.strerror or error}: {error.filename or ''}); start "
                        "explore with --out FOLDER where you can write") from None


class Explorer:
    """A run as the page shows it. z: N x zdim latents (z.npy); views: {name: N x 2}; colourings: {label:
    Colouring}; records: RunRecords; out_dir: where selections and paths are written; header: lines about the
    run for the top of the page."""

    def __init__(self, model, z, views, colourings, records, out_dir, header=(), seed=0, store_path="STORE"):
        self.model, self.z, self.views, self.colourings = model, z, views, colourings
        self.records, self.out_dir, self.header, self.store_path = records, out_dir, list(header), store_path
        self.maps = MapMaker(model)
        self.n_particles = len(z)
        rng = np.random.default_rng(seed)
        self.shown = (np.arange(len(z)) if len(z) <= MAX_SHOWN
                      else np.sort(rng.choice(len(z), MAX_SHOWN, replace=False)))
        self.selections = self._saved_selections()  # name: positions, those saved before first
        self.with_half_sets = model.shape.n_half_sets == 2

    def _saved_selections(self):
        """{name: positions} of the selections saved in out_dir by an earlier explore of this run (their .pkl of
        input rows, matched to the run's particles)."""
        folder = os.path.join(self.out_dir, "selections")
        found = OrderedDict()
        if not os.path.isdir(folder):
            return found
        source_rows = np.asarray(self.records.source_rows)
        run_input_rows = source_rows if self.records.rows is None else source_rows[self.records.rows]
        for name in sorted(os.listdir(folder)):
            stem = name[:-len(".pkl")]
            if name.endswith(".pkl") and NAME.fullmatch(stem):
                try:
                    found[stem] = np.flatnonzero(np.isin(run_input_rows, read_index_file(os.path.join(folder, name))))
                except UserError:
                    continue  # not one of ours
        return found

    def map_of_particle(self, particle):
        return self.maps.map_at(self.z[particle])

    def select(self, view, lasso=None, box=None):
        """Every particle (not only those drawn) inside a lasso ({'x': [...], 'y': [...]}) or a box
        ({'x': [x0, x1], 'y': [y0, y1]}) in `view`."""
        xy = self.views[view]
        if lasso is not None:
            return in_polygon(xy, lasso["x"], lasso["y"])
        if box is not None:
            return in_box(xy, box["x"], box["y"])
        return np.zeros(0, dtype=np.int64)

    def invert(self, positions):
        return np.setdiff1d(np.arange(self.n_particles), positions)

    def save_selection(self, name, positions, overwrite=False):
        with cannot_write_as_user_error(self.out_dir):
            paths, note = write_selection(os.path.join(self.out_dir, "selections"), name, positions, self.records,
                                          overwrite)
        self.selections[check_name(name)] = np.asarray(positions)
        return paths, note

    def path(self, start, end):
        """(particles along the shortest path between two particles through the latents' neighbour graph,
        the PATH_MAPS of them evenly along it whose maps are shown) (analysis.latent.graph_path)."""
        if start == end:
            raise UserError(f"both ends are particle {start}; pick two particles")
        path = graph_path(self.z, start, end)
        return path, evenly_along(self.z, path, PATH_MAPS)

    def save_path(self, on_path):
        """The maps at the particles `on_path` as RUN/explore/paths/path_A_B/map_NN.mrc and a ChimeraX script that
        opens them as a volume series; returns the script's path."""
        folder = os.path.join(self.out_dir, "paths", f"path_{on_path[0]}_{on_path[-1]}")
        names = [f"map_{i:02d}.mrc" for i in range(len(on_path))]
        level = chimerax_level(self.map_of_particle(on_path[0]))
        script = os.path.join(folder, "path.cxc")
        with cannot_write_as_user_error(self.out_dir):
            make_folder(folder, 3)  # OUT/paths/path_A_B
            for name, particle in zip(names, on_path):
                write_map(os.path.join(folder, name), self.map_of_particle(particle), self.model.pixel_size_A)
            write_text(script, f"# hetrec explore: the maps at particles {', '.join(map(str, on_path))}\n"
                               f"open {' '.join(names)} vseries true\nvolume #1 level {level:.6g} style surface\n")
        return script

    def reconstruct_selection(self, name, positions):
        """The particles at `positions` (z.npy order) reconstructed without the model (analysis.reconstruct),
        with the run's half-sets (else the store's, else a random split), refined poses and CTFs:
        OUT/reconstructions/NAME/map.mrc, half1.mrc, half2.mrc. Returns (the map's path, the Reconstruction)."""
        name = check_name(name)
        positions = np.asarray(positions, dtype=np.int64)
        rows = np.sort(positions if self.records.rows is None else np.asarray(self.records.rows)[positions])
        half_sets = reconstruction_half_sets(open_store(self.store_path), rows, given=self.records.half_sets,
                                             what="the selection")[0]
        result = insert_particles(self.store_path, half_sets, rows, self.records.poses,
                                  device=self.model.basis.device, show_progress=False,
                                  ctf=self.records.ctf).reconstruct()
        folder = os.path.join(self.out_dir, "reconstructions", name)
        with cannot_write_as_user_error(self.out_dir):
            make_folder(folder, 3)  # OUT/reconstructions/NAME
            for file_name, volume in (("map.mrc", result.map), ("half1.mrc", result.half_maps[0]),
                                      ("half2.mrc", result.half_maps[1])):
                write_map(os.path.join(folder, file_name), volume, self.model.pixel_size_A)
        return os.path.join(folder, "map.mrc"), result

    def resolution_at(self, particle):
        """The half-maps' FSC at the particle's latent (analysis.half_maps.latent_resolution); UserError for a
        run without half-sets."""
        if not self.with_half_sets:
            raise UserError("the run was trained without half-sets: no half-maps to compare")
        return latent_resolution(self.model, self.z[particle])

    def mrc(self, particle):
        return mrc_bytes(self.map_of_particle(particle), self.model.pixel_size_A)
