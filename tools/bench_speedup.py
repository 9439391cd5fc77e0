"""Training speed of this checkout against an older revision, side by side, so that the machine's drift cancels.

    python tools/bench_speedup.py --old 5673272 --box 64 128 [--n 4096] [--epochs 3] [--rounds 2]

For each box: simulate and convert --n particles (tools/bench_train.py's data: 128 Å of box, SNR 0.1, cached
in --workdir), then, --rounds times, train the default model (batch 256, --epochs epochs, CPU) with the old
revision's code and with this checkout's, one after the other. Prints each run's images/s (its last epoch,
from train.log) and peak RSS (the process tree), and the ratio new / old of each round. The old code is `git
archive`d from this repository into --workdir; each run starts in its code's folder with it first on
PYTHONPATH, so that its own hetrec_dist is the one imported, with the same Python. Nothing else should run on
the machine meanwhile.
"""

import argparse
import os
import subprocess

from bench_train import prepare, train_measured

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def old_checkout(revision, workdir):
    """A folder holding `revision`'s files (made once)."""
    folder = os.path.join(workdir, f"code_{revision}")
    if not os.path.isdir(os.path.join(folder, "hetrec_dist")):
        os.makedirs(folder, exist_ok=True)
        archive = subprocess.run(["git", "-C", ROOT, "archive", revision], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def train_rate(code, store, run, epochs, extra):
    """(images/s of the last epoch, peak RSS in MiB) of `hetrec train` with the hetrec_dist in folder `code`."""
    # run in `code`: python -m puts the working folder first on the path, before PYTHONPATH
    rate, peak = train_measured(store, run, epochs, 256, extra, env={**os.environ, "PYTHONPATH": code}, cwd=code)
    return rate, peak / 2 ** 20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="the revision to compare with (a commit of this repository)")
    parser.add_argument("--box", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/hetrec_bench")
    parser.add_argument("--train-option", action="append", default=[],
                        help="an extra option for both runs' `hetrec train` (repeat for several)")
    args = parser.parse_args()
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    codes = {"old": old_checkout(args.old, args.workdir), "new": ROOT}
    print(f"old: {args.old}; new: this checkout; {args.n} particles, {args.epochs} epochs, images/s of the last")
    for box in args.box:
        store = prepare(args.workdir, args.n, box)
        for round_ in range(1, args.rounds + 1):
            results = {name: train_rate(code, store, os.path.join(args.workdir, f"speedup_{name}"), args.epochs,
                                        args.train_option) for name, code in codes.items()}
            shown = ", ".join(f"{name} {rate:,.0f} images/s at {peak:,.0f} MiB"
                              for name, (rate, peak) in results.items())
            print(f"box {box}, round {round_}: {shown}; new / old x{results['new'][0] / results['old'][0]:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
