"""Benchmark `hetrec convert`: images/s, MB/s and peak RSS (whole process tree) for 1 and 2 workers.

    python tools/bench_convert.py --n 200000 --box 64 --workdir /tmp/hetrec_bench

Simulates the dataset once (reused on later runs), then converts it with each worker count.
"""

import argparse
import os
import subprocess
import sys
import time

import psutil


def tree_rss(process):
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_measured(command, **popen_options):
    """Run a command (popen_options: e.g. its env or cwd); return (seconds, peak RSS of its process tree in
    bytes)."""
    started = time.perf_counter()
    process = psutil.Popen(command, **popen_options)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process))
        time.sleep(0.05)
    if process.returncode:
        sys.exit(f"failed: {' '.join(command)}")
    return time.perf_counter() - started, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--workdir", default="/tmp/hetrec_bench")
    args = parser.parse_args()
    hetrec = [sys.executable, "-m", "hetrec_dist.cli"]
    sim = os.path.join(args.workdir, f"sim_{args.n}_{args.box}")
    if not os.path.exists(os.path.join(sim, "particles.star")):
        subprocess.run([*hetrec, "simulate", "-o", sim, "--n", str(args.n), "--box", str(args.box), "-q",
                        "--overwrite"], check=True)
    raw_mb = args.n * args.box ** 2 * 4 / 1e6
    print(f"convert {args.n} images of box {args.box} ({raw_mb:.0f} MB as float32) to {args.dtype}")
    print(f"{'workers':>8} {'seconds':>8} {'images/s':>9} {'MB/s':>7} {'peak RSS MiB':>13}")
    for workers in args.workers:
        out = os.path.join(args.workdir, f"bench_{workers}.zarr")
        seconds, peak = run_measured([*hetrec, "convert", os.path.join(sim, "particles.star"), "-o", out, "-q",
                                      "--overwrite", "-j", str(workers), "--dtype", args.dtype])
        print(f"{workers:>8} {seconds:>8.1f} {args.n / seconds:>9.0f} {raw_mb / seconds:>7.1f} {peak / 2**20:>13.0f}")


if __name__ == "__main__":
    main()
