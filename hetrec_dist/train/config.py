"""Training configuration: defaults, YAML presets (configs/*.yaml) and command-line overrides."""

import dataclasses
import math
import os
import typing

import yaml

from hetrec_dist.data.atomic_files import write_atomically
from hetrec_dist.distributed.sparse_reducer import STRATEGIES as REDUCTION_STRATEGIES
from hetrec_dist.errors import UserError, warn_input
from hetrec_dist.model.hetvae import ModelShape
from hetrec_dist.physics.maps import EnvelopeMask
from hetrec_dist.train.ctf_refinement import CtfRefinementSettings
from hetrec_dist.train.pose_refinement import RefinementSettings

REDUCTIONS = ("auto",) + REDUCTION_STRATEGIES
MASKS = ("sphere", "envelope")
NOISE_MODELS = ("white", "residuals", "background")


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256
    zdim: int = 8
    n_basis: int = 16
    encoder_hidden: int = 256
    encoder_blocks: int = 5
    max_resolution_A: float = 4.0      # the likelihood and the basis reach this resolution (Å; Nyquist if finer)
    encoder_resolution_A: float = 6.0  # the encoder sees the images to this resolution (Å; not beyond the above)
    lr: float = 1e-3           # Adam, encoder and decoder
    lr_basis: float = 1e-2     # sparse Adam, structural basis
    beta: float = 1.0          # weight of the KL term
    mask_diameter_A: float | None = None  # basis volumes confined to this sphere (soft edge outside); None: 0.9 box
    mask_every: int = 10       # steps between confinements of the basis to the mask
    mask: str = "envelope"     # sphere, or envelope: the sphere times a soft mask around the model's density
    mask_threshold: float = EnvelopeMask.threshold  # envelope: fraction of the RMS density's maximum kept
    mask_warmup_epochs: int = 1  # epochs confined to the sphere alone before the envelope is followed
    seed: int = 0
    device: str = "auto"       # auto: cuda if available, else cpu
    checkpoint_every: int = 5  # epochs
    log_every: int = 10        # steps
    num_workers: int = 0       # DataLoader worker processes (spawned)
    gt: str = ""               # ground_truth/ of a simulated dataset, for evaluation during training
    eval_every: int = 0        # epochs between evaluations against `gt` (0: only after the last epoch)
    basis_reduction: str = "auto"    # several ranks: how the sparse basis gradient is summed (REDUCTIONS)
    collective_timeout_s: int = 600  # several ranks: how long a rank waits for the others before it gives up
    shared_memory_sums: bool = True  # CPU ranks of one machine sum through its shared memory (else gloo)
    noise_model: str = "white"  # white; residuals or background: weight the likelihood by 1/σ² per shell and
    #                             optics group, estimated from the residuals each epoch or from the particle-free
    #                             corners of the images once
    half_sets: bool = False    # a basis per half-set of the particles (gold-standard half-maps; data.half_sets)
    half_sets_join_A: float = 40.0  # half_sets: the halves' bases are one at resolutions coarser than this (Å)
    focus_mask: str = ""       # an MRC mask: the basis volumes confined to it, the mean free (train.focus_mask)
    refine_poses: bool = False  # refine each particle's pose as it trains (train.pose_refinement)
    refine_rotations: bool = True  # refine_poses: the rotations and the shifts (False: the shifts only)
    pose_warmup_epochs: int = 3    # refine_poses: epochs on the given poses first
    pose_max_step_deg: float = 2.0  # refine_poses: the most a rotation moves in one step (degrees)
    pose_max_step_A: float = 1.0    # refine_poses: the most a shift moves in one step (Å)
    pose_prior_deg: float = 3.0     # refine_poses: the given rotations' RMS error thought likely (degrees)
    pose_prior_A: float = 1.0       # refine_poses: the given shifts' RMS error thought likely (Å)
    refine_ctf: bool = False  # refine each particle's defocus as it trains (train.ctf_refinement)
    refine_astigmatism: bool = False  # refine_ctf: the astigmatism too (False: the mean defocus only)
    ctf_warmup_epochs: int = 3        # refine_ctf: epochs on the given defoci first
    defocus_max_step_A: float = 200.0  # refine_ctf: the most a defocus moves in one step (Å)
    defocus_prior_A: float = 500.0     # refine_ctf: the given defoci's RMS error thought likely (Å)

    def pose_refinement(self, pixel_size_A):
        """The refine_* and pose_* settings as train.pose_refinement takes them, shifts in pixels of
        `pixel_size_A`."""
        return RefinementSettings(self.refine_poses, self.refine_rotations, self.pose_warmup_epochs,
                                  self.pose_max_step_deg, self.pose_max_step_A / pixel_size_A, self.pose_prior_deg,
                                  self.pose_prior_A / pixel_size_A)

    def ctf_refinement(self):
        """The refine_ctf, refine_astigmatism and defocus_* settings as train.ctf_refinement takes them."""
        return CtfRefinementSettings(self.refine_ctf, self.refine_astigmatism, self.ctf_warmup_epochs,
                                     self.defocus_max_step_A, self.defocus_prior_A)

    def __post_init__(self):
        """Every setting checked, whether it came from the command line, a YAML file or a run's config.yaml."""
        for name, (valid, what) in _VALID.items():
            value = getattr(self, name)
            if value is not None and not valid(value):
                raise UserError(f"setting {name}: {value!r} is not {what}")
        if self.refine_ctf and not self.half_sets:
            raise UserError("refine_ctf weighs each resolution by the half-maps' FSC, as relion_ctf_refine does: "
                            "give --half-sets too")

    def model_shape(self, box, pixel_size_A):
        """The model's shape for images of `box` pixels of `pixel_size_A`: the resolutions in Å become Fourier
        radii as fractions of the box (pixel size / resolution), so that the same particles at any box train
        alike; none goes beyond Nyquist (0.5)."""
        nyquist_A = 2 * pixel_size_A
        max_resolution_A = max(self.max_resolution_A, nyquist_A)
        box_A = box * pixel_size_A
        for name, value, least in (("max_resolution_A", self.max_resolution_A, MIN_SHELLS),
                                   ("encoder_resolution_A", self.encoder_resolution_A, MIN_ENCODER_SHELLS)):
            if box_A / value < least:
                raise UserError(f"setting {name}: {value:g} Å leaves the model under {least} Fourier shells of this "
                                f"{box_A:g} Å box; give at most {box_A / least:.3g} Å")
        return ModelShape(box=box, zdim=self.zdim, n_basis=self.n_basis, encoder_hidden=self.encoder_hidden,
                          encoder_blocks=self.encoder_blocks,
                          encoder_radius=pixel_size_A / max(self.encoder_resolution_A, max_resolution_A),
                          max_radius=pixel_size_A / max_resolution_A, n_half_sets=2 if self.half_sets else 1)


# The fewest Fourier shells the likelihood and the encoder may reach: below them a map or an image is a blob.
MIN_SHELLS, MIN_ENCODER_SHELLS = 8, 4


def _positive(value):
    return math.isfinite(value) and value > 0


_VALID = {  # setting: (test of a valid value, what a valid value is); None passes where a setting may be unset
    "epochs": (lambda v: v >= 1, "a number of epochs of at least 1"),
    "batch_size": (lambda v: v >= 1, "a number of images of at least 1"),
    "zdim": (lambda v: v >= 1, "a latent dimension of at least 1"),
    "n_basis": (lambda v: v >= 1, "a number of basis volumes of at least 1"),
    "encoder_hidden": (lambda v: v >= 1, "a layer width of at least 1"),
    "encoder_blocks": (lambda v: v >= 1, "a number of blocks of at least 1"),
    "max_resolution_A": (_positive, "a positive resolution in Å"),
    "encoder_resolution_A": (_positive, "a positive resolution in Å"),
    "lr": (_positive, "a positive learning rate"),
    "lr_basis": (_positive, "a positive learning rate"),
    "beta": (lambda v: math.isfinite(v) and v >= 0, "a KL weight of 0 or more"),
    "mask_diameter_A": (_positive, "a positive diameter in Angstrom"),
    "mask_every": (lambda v: v >= 1, "a positive number of steps"),
    "mask": (lambda v: v in MASKS, f"one of {', '.join(MASKS)}"),
    "mask_threshold": (lambda v: 0 < v < 1, "a fraction between 0 and 1"),
    "mask_warmup_epochs": (lambda v: v >= 0, "a number of epochs"),
    "seed": (lambda v: v >= 0, "a seed of 0 or more"),
    "checkpoint_every": (lambda v: v >= 1, "a number of epochs of at least 1"),
    "log_every": (lambda v: v >= 1, "a number of steps of at least 1"),
    "num_workers": (lambda v: v >= 0, "a number of worker processes"),
    "eval_every": (lambda v: v >= 0, "a number of epochs (0: at the end only)"),
    "basis_reduction": (lambda v: v in REDUCTIONS, f"one of {', '.join(REDUCTIONS)}"),
    "collective_timeout_s": (lambda v: v >= 1, "a timeout of at least 1 s"),
    "noise_model": (lambda v: v in NOISE_MODELS, f"one of {', '.join(NOISE_MODELS)}"),
    "half_sets_join_A": (_positive, "a positive resolution in Å"),
    "pose_warmup_epochs": (lambda v: v >= 0, "a number of epochs"),
    "pose_max_step_deg": (lambda v: _positive(v) and v <= 30, "an angle above 0 and at most 30 degrees"),
    "pose_max_step_A": (_positive, "a positive length in Å"),
    "pose_prior_deg": (_positive, "a positive angle in degrees"),
    "pose_prior_A": (_positive, "a positive length in Å"),
    "ctf_warmup_epochs": (lambda v: v >= 0, "a number of epochs"),
    "defocus_max_step_A": (lambda v: _positive(v) and v >= 1, "a defocus of at least 1 Å"),
    "defocus_prior_A": (lambda v: _positive(v) and v >= 1, "a defocus of at least 1 Å"),
}


# Settings of hetrec 0.1 that a run's config.yaml may still hold: fractions of the box, now resolutions in Å.
# A resumed run keeps its checkpoint's shape; elsewhere these are dropped with a warning.
LEGACY_SETTINGS = {"encoder_radius": "encoder_resolution_A", "max_radius": "max_resolution_A"}


def _drop_legacy(values, source):
    for old, new in LEGACY_SETTINGS.items():
        if old in values:
            warn_input(f"{source}: setting {old} (a fraction of the box) is now {new} (Å); {old} is not read, and a "
                       "resumed run keeps its checkpoint's model")
            values.pop(old)
    return values


def _check_keys(values, source):
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{source}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")


# What a run's config.yaml records beside the settings: the store, the command that made the run's current
# settings, and the commands before it (a run resumed with other settings keeps its history).
RUN_RECORD_KEYS = ("store", "command", "earlier_commands")


def load_yaml(path):
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: not a readable YAML config ({err})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a config must be a mapping of setting: value")
    values = {k: v for k, v in values.items() if k not in RUN_RECORD_KEYS}  # a run's config.yaml is a preset too
    values = _drop_legacy(values, path)
    _check_keys(values, path)
    return values


# Settings that set the Fourier extent of a run's model, which a resumed run keeps (train.resume.resumed_shape).
SHAPE_RESOLUTIONS = ("max_resolution_A", "encoder_resolution_A")


def build_config(preset_path=None, overrides=None, saved_path=None):
    """Defaults, then a resumed run's saved settings (saved_path, its config.yaml), then the preset, then the
    overrides that are not None. A saved setting that the preset changes is a warning naming both values
    (options given on the command line change them openly); a change to SHAPE_RESOLUTIONS is refused."""
    saved = load_yaml(saved_path) if saved_path else {}
    preset = load_yaml(preset_path) if preset_path else {}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for name in SHAPE_RESOLUTIONS:
        new = given.get(name, preset.get(name, saved.get(name)))
        if name in saved and new != saved[name]:
            raise UserError(f"a resumed run keeps its model: it was built with {name} {saved[name]!r}, not {new!r}; "
                            "train a new run (another -o) to change it")
    for name in sorted(set(saved) & set(preset) - set(given)):
        if saved[name] != preset[name]:
            warn_input(f"--config {preset_path} changes the resumed run's {name} from {saved[name]!r} to "
                       f"{preset[name]!r}")
    values = {**saved, **preset, **given}
    _check_keys(values, "options")
    return TrainConfig(**{name: _typed(field, values[name]) for name, field in _FIELDS.items() if name in values})


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _base_type(field):
    """int, float or str; X for an optional setting typed X | None."""
    return next((t for t in typing.get_args(field.type) if t is not type(None)), field.type)


def _typed(field, value):
    kind_type = _base_type(field)
    if value is None and kind_type is not field.type:
        return None
    if kind_type is bool:
        if not isinstance(value, bool):
            raise UserError(f"setting {field.name}: {value!r} is not true or false")
        return value
    if kind_type is str:  # YAML's bare `key:` is null: the setting left empty
        if value is not None and not isinstance(value, str):
            raise UserError(f"setting {field.name}: {value!r} is not a string")
        return value or ""
    try:
        typed = None if isinstance(value, bool) else kind_type(value)  # YAML's true is no number
    except (TypeError, ValueError):
        typed = None
    if typed is None or (kind_type is int and typed != value):
        kind = {int: "an integer", float: "a number", str: "a string"}[kind_type]
        raise UserError(f"setting {field.name}: {value!r} is not {kind}")
    return typed


def save_config(config, path, store, command):
    """RUN/config.yaml: every setting, then the run's record (RUN_RECORD_KEYS); the command that wrote an
    existing config.yaml (a resumed run's) joins its earlier_commands."""
    earlier = []
    if os.path.isfile(path):
        with open(path) as f:
            previous = yaml.safe_load(f) or {}
        earlier = list(previous.get("earlier_commands") or []) + [previous.get("command")]
    record = dict(zip(RUN_RECORD_KEYS, (store, command, earlier)))
    text = yaml.safe_dump({**dataclasses.asdict(config), **record}, sort_keys=False)

    def write(temporary):
        with open(temporary, "w") as f:
            f.write(text)

    write_atomically(path, write)
