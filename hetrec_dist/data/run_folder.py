"""The files of a training run's folder, RUN: one name for each, for every command that writes or reads them.

    config.yaml          the run's settings (train.config)
    train.log            what the run did, line by line
    tb/                  TensorBoard's event files
    checkpoints/         last.pt after every epoch, epoch_NNNN.pt every checkpoint_every (train.checkpoint)
    z.npy                the latent mean of each of the run's particles (train.inference.save_latents)
    particles.npy        the store rows a run on a subset trains on (data.subset)
    half_sets.npy        each particle's half-set (data.half_sets)
    mask.mrc             the basis' current real-space mask (train.confinement)
    focus_mask.mrc       a focused run's mask as trained (train.focus_mask)
    noise_spectrum.json  the noise power per optics group and shell (train.noise_model)
    poses.npz, ctf.npz   a run's refined poses and CTFs (train.pose_refinement, train.ctf_refinement)
    eval.json, eval_maps/  the scores and maps against a ground truth (analysis.ground_truth)
    z.pkl                z.npy for cryoDRGN's tools (`hetrec analyze`)
    explore/             what `hetrec explore` saves

It lives in data/, below train/, analysis/ and cli/, so that all of them name the files through it.
"""

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class RunFolder:
    path: str

    def __post_init__(self):
        object.__setattr__(self, "path", os.fspath(self.path))

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    config = property(lambda self: self._file("config.yaml"))
    log = property(lambda self: self._file("train.log"))
    tensorboard = property(lambda self: self._file("tb"))
    checkpoints = property(lambda self: self._file("checkpoints"))
    latents = property(lambda self: self._file("z.npy"))
    particles = property(lambda self: self._file("particles.npy"))
    half_sets = property(lambda self: self._file("half_sets.npy"))
    mask = property(lambda self: self._file("mask.mrc"))
    focus_mask = property(lambda self: self._file("focus_mask.mrc"))
    noise_spectrum = property(lambda self: self._file("noise_spectrum.json"))
    poses = property(lambda self: self._file("poses.npz"))
    ctf = property(lambda self: self._file("ctf.npz"))
    evaluation = property(lambda self: self._file("eval.json"))
    evaluation_maps = property(lambda self: self._file("eval_maps"))
    latents_pkl = property(lambda self: self._file("z.pkl"))
    explorer = property(lambda self: self._file("explore"))

    @staticmethod
    def name(path: str) -> str:
        """How the user sees one of the run's files in a message: RUN/<name>."""
        return f"RUN/{os.path.basename(path)}"
