"""Benchmark training throughput and memory: hetrec train against cryoDRGN's train_vae on the same particles.

    python tools/bench_train.py --n 4096 --box 64 --epochs 3 [--cryodrgn-venv /tmp/cdrgn]

hetrec: the default model (K = 16, zdim 8, encoder 5 x 256) at batch 256; images/s of the last epoch, peak
RSS of the process, mean step-time split from TensorBoard. cryoDRGN (only if --cryodrgn-venv points to a
virtual environment with cryodrgn installed, e.g. `python -m venv V && V/bin/pip install torch==2.13.0
'cryodrgn==4.3.*'`): train_vae in its small setting (--zdim 8 --enc-dim 256 --enc-layers 3 --dec-dim 256
--dec-layers 3 -b 8, --no-analysis) on the same images, poses and CTF, eager loading; images/s of its last
epoch (2 by default) as its log times it.
"""

import argparse
import os
import pickle
import shutil
import subprocess
import sys

import mrcfile
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_convert import run_measured  # noqa: E402


def prepare(workdir, n, box):
    hetrec = [sys.executable, "-m", "hetrec_dist.cli"]
    sim, store = os.path.join(workdir, f"sim_{n}_{box}"), os.path.join(workdir, f"train_{n}_{box}.zarr")
    if not os.path.exists(os.path.join(sim, "particles.star")):
        subprocess.run([*hetrec, "simulate", "-o", sim, "--n", str(n), "--box", str(box), "-q", "--overwrite"],
                       check=True)
    if not os.path.exists(store):
        subprocess.run([*hetrec, "convert", os.path.join(sim, "particles.star"), "-o", store, "-q"], check=True)
    return store


def train_measured(store, run, epochs, batch_size, options=(), **popen_options):
    """`hetrec train` on the CPU (options: more of its options; popen_options: e.g. env, cwd): (images/s of its
    last epoch from train.log, peak RSS of its process tree in bytes)."""
    command = [sys.executable, "-m", "hetrec_dist.cli", "train", store, "-o", run, "--overwrite", "-q",
               "--epochs", str(epochs), "--batch-size", str(batch_size), "--device", "cpu", *options]
    _, peak = run_measured(command, **popen_options)
    lines = [line for line in open(os.path.join(run, "train.log")) if "images_per_s" in line]
    return float(lines[-1].rsplit("images_per_s", 1)[1]), peak


def bench_hetrec(store, workdir, epochs, batch_size):
    run = os.path.join(workdir, "bench_run")
    rate, peak = train_measured(store, run, epochs, batch_size)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(run, "tb")).Reload()
    split = {tag.split("/")[1]: np.mean([e.value for e in events.Scalars(tag)][1:] or [np.nan])
             for tag in events.Tags()["scalars"] if tag.startswith("time/")}
    return rate, peak, split


def write_cryodrgn_inputs(store_path, directory, n=None):
    """The store's first n particles (None: all) as cryoDRGN's inputs: particles.mrcs, poses.pkl, ctf.pkl."""
    import zarr

    group = zarr.open_group(store_path, mode="r")
    box, rows = group.attrs["box"], slice(0, n)
    os.makedirs(directory, exist_ok=True)
    mrcfile.write(os.path.join(directory, "particles.mrcs"), group["images"][rows].astype(np.float32),
                  overwrite=True, voxel_size=group.attrs["pixel_size_A"])
    with open(os.path.join(directory, "poses.pkl"), "wb") as f:
        pickle.dump((group["rotations"][rows], group["shifts"][rows] / box), f)
    with open(os.path.join(directory, "ctf.pkl"), "wb") as f:
        pickle.dump(group["ctf"][rows].astype(np.float32), f)
    return directory


def bench_cryodrgn(venv, store, workdir, epochs=2, n=None):
    """images/s of cryoDRGN's last epoch, as its own log times it; peak RSS of the whole run (on the store's
    first n particles; None: all)."""
    inputs = write_cryodrgn_inputs(store, os.path.join(workdir, "cryodrgn_inputs"), n)
    n = int(mrcfile.open(os.path.join(inputs, "particles.mrcs"), header_only=True).header.nz)
    out = os.path.join(workdir, "cryodrgn_run")
    shutil.rmtree(out, ignore_errors=True)
    command = [os.path.join(venv, "bin", "cryodrgn"), "train_vae", os.path.join(inputs, "particles.mrcs"),
               "--poses", os.path.join(inputs, "poses.pkl"), "--ctf", os.path.join(inputs, "ctf.pkl"),
               "--zdim", "8", "--enc-dim", "256", "--enc-layers", "3", "--dec-dim", "256", "--dec-layers", "3",
               "-b", "8", "-n", str(epochs), "--no-analysis", "-o", out]
    _, peak = run_measured(command)
    epoch_lines = [line for line in open(os.path.join(out, "run.log")) if "=====> Epoch" in line]
    hours, minutes, seconds = epoch_lines[-1].rsplit("Finished in ", 1)[1].strip().split(":")
    return n / (int(hours) * 3600 + int(minutes) * 60 + float(seconds)), peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cryodrgn-venv")
    parser.add_argument("--cryodrgn-particles", type=int, help="cryoDRGN on the first N particles only")
    parser.add_argument("--cryodrgn-epochs", type=int, default=2)
    parser.add_argument("--cryodrgn-only", action="store_true", help="skip hetrec's run")
    parser.add_argument("--workdir", default="/tmp/hetrec_bench")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    store = prepare(args.workdir, args.n, args.box)
    if not args.cryodrgn_only:
        rate, peak, split = bench_hetrec(store, args.workdir, args.epochs, args.batch_size)
        print(f"hetrec   box {args.box}, K 16, batch {args.batch_size}: {rate:.0f} images/s, "
              f"peak RSS {peak / 2**20:.0f} MiB")
        print("         step split (s/step): " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(split.items())))
    if args.cryodrgn_venv:
        other_rate, other_peak = bench_cryodrgn(args.cryodrgn_venv, store, args.workdir, args.cryodrgn_epochs,
                                                args.cryodrgn_particles)
        print(f"cryoDRGN train_vae small, -b 8, box {args.box}: {other_rate:.1f} images/s, "
              f"peak RSS {other_peak / 2**20:.0f} MiB")
        if not args.cryodrgn_only:
            print(f"ratio: {rate / other_rate:.1f}x images/s, {peak / other_peak:.2f}x peak memory")


if __name__ == "__main__":
    main()
