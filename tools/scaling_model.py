"""A model of data-parallel training speed for 1 to 64 ranks: images/s and efficiency per basis-gradient
reduction strategy, from a rank's measured compute and the reducer's exact byte counts.

    python tools/scaling_model.py --box 128 --batch 256 --ranks 1 2 4 8 16 32 64 --ranks-per-node 8 \\
        --step-s 0.35 --build-s 0.1 --links nvlink:150:5 ib100:12.5:15 ib400:50:10
    python tools/scaling_model.py --check     # against the 2-rank runs on this machine (docs/benchmarks.md)

Weak scaling: each of W ranks takes --batch images a step. A step of W ranks takes

    t(W) = compute x (1 + contention) + wait + dense all-reduce + basis reduction [+ rebuild, for factors]

- compute (--step-s): one rank's step without the basis reduction: forward, backward, optimizer, data;
  its basis gradient built from its own images' factors (--build-s) is in every strategy's time.
- dense all-reduce: the encoder's and decoder's gradients (their parameter count, from the model at this box),
  through a ring: 2 (W-1)/W of them sent, 2 (W-1) latencies.
- basis reduction: the bytes one rank sends under each strategy (distributed/sparse_reducer.py's payload_bytes
  and bytes_sent, from the touched voxels of real central slices: tools/reducer_bytes_table.py), at the
  link's bandwidth, plus its latencies (2 (W-1) a ring all-reduce, W-1 an all-gather; dense, union and auto
  also all-reduce the touched mask).
- wait: every collective waits for the slowest rank; with step times of spread --jitter-s (one standard
  deviation), the slowest of W is on average E[max of W normals] x jitter above the mean (Blom's formula).
- contention: compute slows when ranks share what a rank does not have alone (this machine's two cores share
  memory bandwidth: forward +5% with both busy); 0 for GPUs, one each.
- factors: every rank also builds the other W-1 ranks' gradient contributions from their factors, (W-1) x
  --build-s (the same product as its own) plus the slice geometry of their images (--rebuild-s per batch,
  measured below for the CPU).

Links: NAME:GB/s:microseconds, the bandwidth and latency a rank sees. Within a node of --ranks-per-node the
first link is used; across nodes the second and later (one row of the table each). auto picks the fewest
bytes (what the reducer does); "best" is the fastest by this model.

What it leaves out: overlap of communication with compute (the trainer overlaps none), and links shared by
several jobs.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from reducer_bytes_table import N_COMPONENTS, touched  # noqa: E402

# This machine (2 cores), one thread a rank, box 64, 256 images a rank (docs/benchmarks.md, "Data-parallel
# scaling on this machine", session 5 medians): one rank's step split, the shared-memory all-reduce, and
# the extra reduce time two ranks measured under factors (the rebuild).
CPU_BOX64 = {"forward": 0.1754, "backward": 0.0142, "reduce": 0.0592, "optimizer": 0.0197, "data": 0.0001}
SHARED_MEMORY_LINK = ("shared-memory", 10.5e6 / 1.9e-3 / 1e9, 20.0)  # 10.5 MB in 1.9 ms; latency a guess
MEASURED_TWO_RANKS = {"union": 0.89, "dense": 0.90, "factors": 0.53, "auto": 0.53}
# one rank's logged step rates ranged 830-1,130 images/s (256 images): step times 0.23-0.31 s, about 0.02 s
# one standard deviation; forward +0.009 s with both cores busy (about 5% of the compute)
CPU_JITTER_S, CPU_CONTENTION = 0.02, 0.05


def expected_max_of_normals(n):
    """E[max of n standard normals], Blom's approximation (exact at n = 1: 0)."""
    from scipy.stats import norm

    return 0.0 if n == 1 else float(norm.ppf((n - 0.375) / (n + 0.25)))
FACTORS_REDUCE_TWO_RANKS_S = 0.2645  # reduce s a step, 2 ranks, factors (session-4 table)


def dense_parameters(box):
    """The encoder's and decoder's parameter count of the default model at this box (128 Å of box)."""
    from hetrec_dist.model.hetvae import HetVAE
    from hetrec_dist.train.config import build_config

    config = build_config(None, {})
    model = HetVAE(config.model_shape(box, 128.0 / box), 128.0 / box, 1.0)
    return sum(p.numel() for p in model.dense_modules().parameters())


def reduction_bytes(box, batch, ranks, rng):
    """{strategy: bytes one rank sends}, and the collectives each makes (all-reduces, all-gathers)."""
    import torch

    from hetrec_dist.distributed.sparse_reducer import STRATEGIES, bytes_sent, payload_bytes
    from hetrec_dist.physics.fourier_grid import HalfBall, HalfDisk
    from hetrec_dist.physics.projector import factor_columns
    from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler

    half_ball, disk = HalfBall.build(box / 2 - 1), HalfDisk.build(box, box / 2 - 1)
    rotations = torch.from_numpy(matrices_from_relion_euler(*random_relion_euler(batch * ranks, rng))).float()
    masks = [touched(r, disk, half_ball) for r in rotations.chunk(ranks)]
    union = int(torch.stack(masks).any(0).sum())
    max_nnz = max(int(m.sum()) for m in masks)
    payload = payload_bytes(half_ball.n_voxels, N_COMPONENTS, factor_columns(N_COMPONENTS, disk.coords.shape[0]),
                            max_nnz, batch, union, ranks)
    sent = {s: bytes_sent(s, payload, half_ball.n_voxels, ranks) for s in STRATEGIES}
    sent["auto"] = bytes_sent("auto", payload, half_ball.n_voxels, ranks)
    auto_pick = min(payload, key=payload.get)
    collectives = {"dense": (2, 1), "union": (2, 1), "gather": (0, 2), "factors": (0, 2)}  # (all-reduces, -gathers)
    mask = 0 if auto_pick in ("dense", "union") else 1  # auto all-reduces the mask before it picks
    collectives["auto"] = (mask + collectives[auto_pick][0], collectives[auto_pick][1])
    return sent, collectives, auto_pick


def step_seconds(ranks, strategy, sent, collectives, auto_pick, link, step_s, build_s, rebuild_s, dense_bytes,
                 jitter_s=0.0, contention=0.0):
    if ranks == 1:
        return step_s + build_s
    _, gb_s, latency_us = link
    bandwidth, latency = gb_s * 1e9, latency_us * 1e-6
    all_reduces, all_gathers = collectives[strategy]
    comm = sent[strategy] / bandwidth + (all_reduces * 2 + all_gathers) * (ranks - 1) * latency
    dense = 2 * (ranks - 1) / ranks * dense_bytes / bandwidth + 2 * (ranks - 1) * latency
    rebuilds = strategy == "factors" or (strategy == "auto" and auto_pick == "factors")
    rebuild = (ranks - 1) * (build_s + rebuild_s) if rebuilds else 0.0
    wait = jitter_s * expected_max_of_normals(ranks)
    return (step_s + build_s) * (1 + contention) + wait + comm + dense + rebuild


def predict(box, batch, ranks_list, ranks_per_node, links, step_s, build_s, rebuild_s, jitter_s=0.0, contention=0.0,
            seed=0):
    rng = np.random.default_rng(seed)
    dense_bytes = 4 * dense_parameters(box)
    rows = []
    for ranks in ranks_list:
        sent, collectives, auto_pick = reduction_bytes(box, batch, ranks, rng) if ranks > 1 else ({}, {}, "-")
        for link in (links[:1] if ranks <= ranks_per_node else links[1:]):
            times = {s: step_seconds(ranks, s, sent, collectives, auto_pick, link, step_s, build_s, rebuild_s,
                                     dense_bytes, jitter_s, contention)
                     for s in (("dense", "union", "gather", "factors", "auto") if ranks > 1 else ("dense",))}
            one = step_s + build_s
            best = min((s for s in times if s != "auto"), key=times.get) if ranks > 1 else "-"
            rows.append({"ranks": ranks, "link": link[0] if ranks > 1 else "-", "auto picks": auto_pick,
                         "best": best, **{s: (ranks * batch / t, one * 1.0 / t) for s, t in times.items()}})
    return rows


def print_table(rows):
    strategies = ("dense", "union", "gather", "factors", "auto")
    print("| ranks | link | " + " | ".join(f"{s} images/s (efficiency)" for s in strategies)
          + " | auto picks | fastest |")
    print("|---" * (4 + len(strategies)) + "|")
    for row in rows:
        cells = [f"{row[s][0]:,.0f} ({row[s][1]:.0%})" if s in row else "" for s in strategies]
        print(f"| {row['ranks']} | {row['link']} | " + " | ".join(cells) + f" | {row['auto picks']} | {row['best']} |")


def check():
    """The model against the 2-rank runs on this machine: box 64, 256 images a rank, shared memory."""
    step_s = CPU_BOX64["forward"] + CPU_BOX64["backward"] + CPU_BOX64["optimizer"] + CPU_BOX64["data"]
    build_s = CPU_BOX64["reduce"]
    # fitted from the 2-rank factors run itself (what its reduce took beyond two builds): its check is not
    # independent; union's and dense's are
    rebuild_s = FACTORS_REDUCE_TWO_RANKS_S - 2 * build_s
    rows = predict(64, 256, [1, 2], 2, [SHARED_MEMORY_LINK], step_s, build_s, rebuild_s, CPU_JITTER_S,
                   CPU_CONTENTION)
    print_table(rows)
    two = rows[-1]
    print("\n| strategy | predicted efficiency | measured (medians, docs/benchmarks.md) |\n|---|---|---|")
    for strategy, measured in MEASURED_TWO_RANKS.items():
        print(f"| {strategy} | {two[strategy][1]:.0%} | {measured:.0%} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256, help="Images a rank a step.")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--ranks-per-node", type=int, default=8)
    parser.add_argument("--step-s", type=float, help="One rank's step without the basis reduction (s).")
    parser.add_argument("--build-s", type=float, help="One rank's build of its basis gradient (s).")
    parser.add_argument("--rebuild-s", type=float, help="factors: the slice geometry of another rank's batch (s).")
    parser.add_argument("--jitter-s", type=float, default=0.0, help="One standard deviation of a rank's step time.")
    parser.add_argument("--contention", type=float, default=0.0, help="Compute slow-down with every rank busy.")
    parser.add_argument("--links", nargs="+", default=["nvlink:150:5", "ib100:12.5:15", "ib200:25:12",
                                                       "ib400:50:10"])
    parser.add_argument("--check", action="store_true", help="Compare with this machine's 2-rank runs.")
    args = parser.parse_args()
    if args.check:
        check()
        return
    if None in (args.step_s, args.build_s, args.rebuild_s):
        parser.error("give --step-s, --build-s and --rebuild-s (measured on the device), or --check")
    links = [(name, float(gb), float(us)) for name, gb, us in (link.split(":") for link in args.links)]
    print_table(predict(args.box, args.batch, args.ranks, args.ranks_per_node, links, args.step_s, args.build_s,
                        args.rebuild_s, args.jitter_s, args.contention))


if __name__ == "__main__":
    main()
