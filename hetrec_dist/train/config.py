"""Training configuration: defaults, YAML presets (configs/*.yaml) and command-line overrides."""

import dataclasses
import typing

import yaml

from hetrec_dist.distributed.sparse_reducer import STRATEGIES as REDUCTION_STRATEGIES
from hetrec_dist.errors import UserError
from hetrec_dist.model.hetvae import ModelShape
from hetrec_dist.physics.maps import EnvelopeMask

REDUCTIONS = ("auto",) + REDUCTION_STRATEGIES
MASKS = ("sphere", "envelope")


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256
    zdim: int = 8
    n_basis: int = 16
    encoder_hidden: int = 256
    encoder_blocks: int = 5
    encoder_radius: float = 0.25
    max_radius: float = 0.5
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

    def __post_init__(self):
        if self.mask_diameter_A is not None and not self.mask_diameter_A > 0:
            raise UserError(f"setting mask_diameter_A: {self.mask_diameter_A!r} is not a positive diameter in Angstrom")
        if self.mask_every < 1:
            raise UserError(f"setting mask_every: {self.mask_every!r} is not a positive number of steps")
        if self.mask not in MASKS:
            raise UserError(f"setting mask: {self.mask!r} is not one of {', '.join(MASKS)}")
        if not 0 < self.mask_threshold < 1:
            raise UserError(f"setting mask_threshold: {self.mask_threshold!r} is not a fraction between 0 and 1")
        if self.mask_warmup_epochs < 0:
            raise UserError(f"setting mask_warmup_epochs: {self.mask_warmup_epochs!r} is not a number of epochs")
        if self.basis_reduction not in REDUCTIONS:
            raise UserError(f"setting basis_reduction: {self.basis_reduction!r} is not one of {', '.join(REDUCTIONS)}")

    def model_shape(self, box):
        return ModelShape(box=box, zdim=self.zdim, n_basis=self.n_basis, encoder_hidden=self.encoder_hidden,
                          encoder_blocks=self.encoder_blocks, encoder_radius=self.encoder_radius,
                          max_radius=self.max_radius)


def _check_keys(values, source):
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{source}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")


RUN_RECORD_KEYS = ("store", "command")  # what a run's config.yaml records beside the settings


def load_yaml(path):
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: not a readable YAML config ({err})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a config must be a mapping of setting: value")
    values = {k: v for k, v in values.items() if k not in RUN_RECORD_KEYS}  # a run's config.yaml is a preset too
    _check_keys(values, path)
    return values


def build_config(preset_path=None, overrides=None):
    """Defaults, then the preset, then the overrides that are not None."""
    values = load_yaml(preset_path) if preset_path else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
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
    try:
        typed = kind_type(value)
    except (TypeError, ValueError):
        typed = None
    if typed is None or (kind_type is int and typed != value):
        kind = {int: "an integer", float: "a number", str: "a string"}[kind_type]
        raise UserError(f"setting {field.name}: {value!r} is not {kind}")
    return typed


def save_config(config, path, store, command):
    """RUN/config.yaml: every setting, then the run's record (RUN_RECORD_KEYS)."""
    record = dict(zip(RUN_RECORD_KEYS, (store, command)))
    with open(path, "w") as f:
        yaml.safe_dump({**dataclasses.asdict(config), **record}, f, sort_keys=False)
