"""Real dataset sizes: every step of a user's day on a store larger than this machine's RAM, beside the same
steps on 10,000 particles.

    python tools/bench_million.py --n 10000 600000 --box 128 --dtype float32 --workdir /tmp/hetrec_million

For each N: a store of N particles is written directly (synthetic: noise-dominated images, which compress as
little as real ones do, with random poses, shifts, defoci and two optics groups; converting 600,000 particles
from MRC stacks would need the stacks beside the store, twice the disk), then each step runs as the `hetrec`
command a user types, timed with /usr/bin/time (wall seconds, peak RSS), with the page cache emptied before
it (`echo 3 > /proc/sys/vm/drop_caches`, as root) so that the store is read from disk:

    train (1 epoch, --shifts-only --pose-warmup 1) / train --resume to 2 epochs (refining shifts) /
    embed / analyze --k 20 (UMAP on its 50,000-particle sample) / select --clusters 0 -o x.pkl /
    export -o poses.pkl / train --exclude x.pkl (1 epoch: a subset without copying)

Training's images/s are its epochs' (train.log). `--convert-n` also times `hetrec convert` from a STAR over
stacks of 1,000 images for those sizes (smaller: the stacks are written first). Check free disk first: the
store takes N x box^2 x (4 or 2) bytes (600,000 at box 128 in float32: 39 GB); --keep leaves it.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

HETREC = [sys.executable, "-m", "hetrec_dist.cli"]
POOL = 4096  # distinct noise images, rolled from chunk to chunk


def drop_page_cache():
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def make_store(path, n, box, dtype, seed=0):
    """A complete store of n synthetic particles (see the module doc)."""
    from hetrec_dist.data.store import (
        IDENTITY_ATTR,
        chunk_statistics,
        compute_content_sha256,
        create_store,
        default_chunk_images,
        normalization,
    )
    from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler

    rng = np.random.default_rng(seed)
    chunk = default_chunk_images(box, dtype)
    attrs = {"box": box, "pixel_size_A": 128.0 / box, "n_particles": n, "image_dtype": dtype,
             "chunk_images": chunk, "original_box": box, "original_pixel_size_A": 128.0 / box,
             "input_options": {"optics_groups": []}, "invert_contrast": False,
             "sources": {"metadata": [{"path": "synthetic.star", "sha256": "0" * 64}], "stacks": []}}
    group = create_store(path, n, box, dtype, chunk, attrs)
    y, x = np.mgrid[:box, :box] - box // 2
    blob = np.exp(-(x ** 2 + y ** 2) / (2 * (box / 8) ** 2))
    pool = (rng.normal(size=(POOL, box, box)) + 0.3 * blob).astype(dtype)
    for start in range(0, n, chunk):
        images = pool[(start // chunk * 7 + np.arange(min(chunk, n - start))) % POOL]  # another mix a chunk
        group["images"][start:start + len(images)] = images
        group["chunk_stats"][start // chunk] = chunk_statistics(images)
    group["rotations"][:] = matrices_from_relion_euler(*random_relion_euler(n, rng)).astype(np.float32)
    group["shifts"][:] = rng.normal(scale=1.0, size=(n, 2)).astype(np.float32)
    defocus = rng.uniform(10000, 30000, n)
    ctf = np.zeros((n, 9), np.float32)
    ctf[:, 0], ctf[:, 1], ctf[:, 2], ctf[:, 3] = box, 128.0 / box, defocus, defocus - 200
    ctf[:, 5], ctf[:, 6], ctf[:, 7] = 300, 2.7, 0.1
    group["ctf"][:] = ctf
    group["optics_group"][:] = 1 + (np.arange(n) >= n // 2)
    group["source_index"][:] = np.arange(n)
    group["source_row"][:] = np.arange(n)
    group["ctf_envelope"][:] = np.tile(np.array([1.0, 0.0], np.float32), (n, 1))
    group.attrs.update({"normalization": normalization(group["chunk_stats"][:])})
    group.attrs.update({IDENTITY_ATTR: compute_content_sha256(group), "complete": True})


def timed(command, log):
    """(wall seconds, peak RSS MiB) of a command; its output appended to `log`."""
    stats = log + ".time"
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(map(str, command))}\n")
        out.flush()
        result = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", stats, *map(str, command)], stdout=out,
                                stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(map(str, command))}; see {log}")
    seconds, rss_kib = open(stats).read().split()[-2:]
    return float(seconds), float(rss_kib) / 1024


def epoch_rates(run):
    """images/s of each epoch, from train.log."""
    text = open(os.path.join(run, "train.log")).read()
    return [float(v) for v in re.findall(r"epoch \d+: .*?images_per_s ([0-9.e+]+)", text)]


def write_stacks(folder, n, box, per_stack=1000):
    """n noise images in MRC stacks of per_stack and a RELION 3.1 STAR naming them (for convert)."""
    import mrcfile
    import starfile

    from hetrec_dist.physics.rotations import random_relion_euler

    os.makedirs(os.path.join(folder, "stacks"), exist_ok=True)
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(per_stack, box, box)).astype(np.float32)
    names = []
    for s, start in enumerate(range(0, n, per_stack)):
        count = min(per_stack, n - start)
        path = os.path.join(folder, "stacks", f"s{s:05d}.mrcs")
        mrcfile.write(path, pool[(s + np.arange(count)) % per_stack], voxel_size=128.0 / box, overwrite=True)
        names += [f"{i + 1}@stacks/s{s:05d}.mrcs" for i in range(count)]
    rot, tilt, psi = random_relion_euler(n, rng)
    particles = {"rlnImageName": names, "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
                 "rlnOriginXAngst": np.zeros(n), "rlnOriginYAngst": np.zeros(n),
                 "rlnDefocusU": rng.uniform(10000, 30000, n), "rlnOpticsGroup": np.ones(n, int)}
    particles["rlnDefocusV"], particles["rlnDefocusAngle"] = particles["rlnDefocusU"] - 200, np.zeros(n)
    optics = {"rlnOpticsGroup": [1], "rlnImagePixelSize": [128.0 / box], "rlnImageSize": [box],
              "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
              "rlnImageDimensionality": [2]}
    import pandas as pd

    starfile.write({"optics": pd.DataFrame(optics), "particles": pd.DataFrame(particles)},
                   os.path.join(folder, "particles.star"))


def run_steps(n, args, rows):
    root = os.path.join(args.workdir, f"n{n}")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    log = os.path.join(root, "commands.log")
    store, run = os.path.join(root, "particles.zarr"), os.path.join(root, "run")
    started = time.perf_counter()
    make_store(store, n, args.box, args.dtype)
    build_s = time.perf_counter() - started
    size_gb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(store) for f in fs) / 1e9
    rows.append({"n": n, "step": "store written (synthetic)", "seconds": build_s, "rss_mib": None,
                 "note": f"{size_gb:.1f} GB on disk"})
    steps = [
        ("train, 1 epoch", [*HETREC, "train", store, "-o", run, "--epochs", 1, "--shifts-only", "--pose-warmup", 1,
                            "-q"]),
        ("train --resume, epoch 2", [*HETREC, "train", store, "-o", run, "--resume", "--epochs", 2, "-q"]),
        ("embed", [*HETREC, "embed", run]),
        ("analyze --k 20", [*HETREC, "analyze", run, "--k", 20]),
        ("select -o x.pkl", [*HETREC, "select", run, "--k", 20, "--clusters", 0, "-o",
                             os.path.join(root, "x.pkl")]),
        ("export -o poses.pkl", [*HETREC, "export", run, "-o", os.path.join(root, "poses.pkl")]),
        ("train --exclude x.pkl, 1 epoch", [*HETREC, "train", store, "-o", run + "_subset", "--epochs", 1,
                                            "--exclude", os.path.join(root, "x.pkl"), "-q"]),
    ]
    for name, command in steps:
        cold = drop_page_cache()
        seconds, rss = timed(command, log)
        row = {"n": n, "step": name, "seconds": seconds, "rss_mib": rss, "cold_cache": cold}
        if name.startswith("train"):
            rates = epoch_rates(run + ("_subset" if "exclude" in name else ""))
            row["images_per_s"] = rates[-1]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not args.keep:
        shutil.rmtree(store)


def run_convert(n, args, rows):
    root = os.path.join(args.workdir, f"convert{n}")
    shutil.rmtree(root, ignore_errors=True)
    write_stacks(root, n, args.box)
    cold = drop_page_cache()
    seconds, rss = timed([*HETREC, "convert", os.path.join(root, "particles.star"), "-o",
                          os.path.join(root, "p.zarr"), "-q"], os.path.join(root, "commands.log"))
    row = {"n": n, "step": "convert (STAR, stacks of 1,000)", "seconds": seconds, "rss_mib": rss,
           "images_per_s": n / seconds, "cold_cache": cold}
    rows.append(row)
    print(json.dumps(row), flush=True)
    shutil.rmtree(root)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10000, 600000])
    parser.add_argument("--convert-n", type=int, nargs="*", default=[])
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--workdir", default="/tmp/hetrec_million")
    parser.add_argument("--keep", action="store_true", help="Leave the stores.")
    args = parser.parse_args()
    need_gb = max(args.n) * args.box ** 2 * (4 if args.dtype == "float32" else 2) / 1e9
    os.makedirs(args.workdir, exist_ok=True)
    free_gb = shutil.disk_usage(args.workdir).free / 1e9
    print(f"the largest store needs about {need_gb:.1f} GB; {free_gb:.1f} GB free in {args.workdir}", flush=True)
    if need_gb > 0.9 * free_gb:
        raise SystemExit("not enough free disk")
    rows = []
    for n in args.convert_n:
        run_convert(n, args, rows)
    for n in args.n:
        run_steps(n, args, rows)
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n| N | step | seconds | peak RSS (MiB) | images/s |\n|---|---|---|---|---|")
    for r in rows:
        rss = "" if r.get("rss_mib") is None else f"{r['rss_mib']:.0f}"
        rate = f"{r['images_per_s']:.0f}" if "images_per_s" in r else r.get("note", "")
        print(f"| {r['n']:,} | {r['step']} | {r['seconds']:.1f} | {rss} | {rate} |")


if __name__ == "__main__":
    main()
