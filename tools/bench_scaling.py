"""Scaling runs: the same training on 1, 2, … ranks (one thread each), into one TensorBoard parent folder.

    python tools/bench_scaling.py --n 8192 --box 64 --epochs 3 --batch-size 128 --ranks 1 2 --out scaling

Weak scaling: every rank keeps --batch-size images a step, so W ranks take W times the global batch. Runs
with several ranks go through `hetrec launch` (deepspeed launcher), once per --strategies entry. Each run
writes OUT/ranks_W_STRATEGY/ (a normal run folder: tb/ holds images/s in total and per rank, the step-time
split and the reducer's bytes); OUT/summary/ gets scaling/images_per_s, scaling/efficiency and
scaling/reduce_bytes_per_step against the number of ranks. Images/s are the mean over the epochs after the
first (one epoch alone varies by 10% here); step-time split and reducer figures are means over the steps
logged after the first epoch. Efficiency of W ranks: images/s / (W x images/s of one rank). With
--repeats N every configuration runs N times, one after another in turn (so that a slow spell of the
machine hits all of them), into OUT/ranks_W_STRATEGY_K/, and the table shows medians (one rank alone
varies by ±10% between runs here).

Each run is pinned (taskset) to as many cores as it has ranks, so that W ranks get W times the resources of
one: unpinned, one rank with one compute thread still spreads its reader thread, gloo and page-zeroing over
the idle cores, which W ranks cannot. --no-pin runs everything on all cores.
"""

import argparse
import os
import socket
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_train import prepare  # noqa: E402


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(store, run, ranks, strategy, args):
    train_args = ["train", store, "-o", run, "--overwrite", "-q", "--epochs", str(args.epochs),
                  "--batch-size", str(args.batch_size), "--device", "cpu", "--basis-reduction", strategy,
                  "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if ranks == 1:
        command = [sys.executable, "-m", "hetrec_dist.cli", *train_args]
    else:
        command = [sys.executable, "-m", "hetrec_dist.cli", "launch", "--procs-per-node", str(ranks),
                   "--master-port", str(_free_port()), "--env", "OMP_NUM_THREADS", "--", *train_args]
    if args.pin:
        command = ["taskset", "--cpu-list", f"0-{ranks - 1}", *command]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def read_run(run, steps_per_epoch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(run, "tb")).Reload()
    scalars = events.Tags()["scalars"]

    def later_mean(tag):
        values = [e.value for e in events.Scalars(tag) if e.step > steps_per_epoch] if tag in scalars else []
        return float(np.mean(values)) if values else float("nan")

    epochs = [e.value for e in events.Scalars("epoch/images_per_s")]
    result = {"images_per_s": float(np.mean(epochs[1:] or epochs))}
    for tag in scalars:
        if tag.startswith(("time/", "reduce/")) or tag == "perf/images_per_s_per_rank":
            result[tag] = later_mean(tag)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="images a rank a step")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--strategies", nargs="+", default=["auto", "factors", "union", "gather", "dense"])
    parser.add_argument("--out", default="scaling")
    parser.add_argument("--workdir", default="/tmp/hetrec_bench")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every configuration this many times, interleaved, and report medians")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="run every run on all cores")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.pin and max(args.ranks) > os.cpu_count():
        parser.error(f"{max(args.ranks)} ranks cannot each have a core of the {os.cpu_count()} here (or --no-pin)")
    os.makedirs(args.workdir, exist_ok=True)
    store = prepare(args.workdir, args.n, args.box)
    from torch.utils.tensorboard import SummaryWriter

    results = {}
    for repeat in range(args.repeats):
        for ranks in args.ranks:
            for strategy in (["auto"] if ranks == 1 else args.strategies):
                name = f"ranks_{ranks}_{strategy}" + (f"_{repeat + 1}" if args.repeats > 1 else "")
                run = os.path.join(args.out, name)
                train(store, run, ranks, strategy, args)
                results.setdefault((ranks, strategy), []).append(read_run(run, args.n // (args.batch_size * ranks)))
                print(f"{name}: {results[ranks, strategy][-1]['images_per_s']:.0f} images/s", file=sys.stderr)
    print_table(results, SummaryWriter(os.path.join(args.out, "summary")))


def print_table(results, summary):
    """One row per (ranks, strategy): medians over the repeats; efficiency against one rank's median."""
    print("| ranks | reduction | images/s | runs' images/s | images/s a rank | efficiency | forward s | backward s "
          "| reduce s | optimizer s | data s | MB sent a step | dense all-reduce MB |")
    print("|---" * 13 + "|")
    single = None
    for (ranks, strategy), runs in results.items():
        median = {key: float(np.median([run.get(key, 0.0) for run in runs])) for key in runs[0]}
        rate = median["images_per_s"]
        single = single or rate
        efficiency = rate / (ranks * single)
        each = ", ".join(f"{run['images_per_s']:.0f}" for run in runs)
        sent, dense = median.get("reduce/bytes_sent", 0.0), median.get("reduce/dense_bytes", 0.0)
        print(f"| {ranks} | {strategy if ranks > 1 else '-'} | {rate:.0f} | {each} | {rate / ranks:.0f} | "
              f"{efficiency:.0%} | " + " | ".join(f"{median.get(f'time/{k}_s', float('nan')):.4f}" for k in
                                                 ("forward", "backward", "reduce", "optimizer", "data"))
              + f" | {sent / 1e6:.2f} | {dense / 1e6:.2f} |", flush=True)
        if strategy == "auto":
            summary.add_scalar("scaling/images_per_s", rate, ranks)
            summary.add_scalar("scaling/efficiency", efficiency, ranks)
            summary.add_scalar("scaling/reduce_bytes_per_step", sent, ranks)
    summary.close()


if __name__ == "__main__":
    main()
