"""Time one all-reduce SUM of a float32 tensor between ranks of this machine: gloo against DeepSpeed's
shared-memory kernel (what distributed.shared_memory uses), and check both give the same bits.

    OMP_NUM_THREADS=1 taskset --cpu-list 0-1 deepspeed --num_gpus 2 tools/bench_allreduce.py --mb 10.5

Prints, on rank 0, the median over --calls calls, each started after a barrier.
"""

import argparse
import os
import statistics
import time

import deepspeed
import deepspeed.comm
import torch
import torch.distributed as dist


def median_seconds(all_reduce, tensor, calls):
    times = []
    for _ in range(calls):
        dist.barrier()
        started = time.perf_counter()
        all_reduce(tensor)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=10.5, help="tensor size in MB")
    parser.add_argument("--calls", type=int, default=20)
    args, _ = parser.parse_known_args()  # the launcher may add --local_rank
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    if os.environ.get("LOCAL_SIZE") != str(dist.get_world_size()):
        raise SystemExit("run every rank on this machine under the deepspeed launcher (it sets LOCAL_SIZE)")
    rank = dist.get_rank()
    data = torch.randn(int(args.mb * 1e6 / 4), generator=torch.Generator().manual_seed(rank))
    gloo, shared = data.clone(), data.clone()
    dist.all_reduce(gloo)
    deepspeed.comm.inference_all_reduce(shared)
    same = torch.equal(gloo, shared)
    gloo_s = median_seconds(dist.all_reduce, data.clone(), args.calls)
    shared_s = median_seconds(deepspeed.comm.inference_all_reduce, data.clone(), args.calls)
    if rank == 0:
        print(f"{dist.get_world_size()} ranks, {args.mb} MB float32: gloo {gloo_s * 1e3:.2f} ms, "
              f"shared memory {shared_s * 1e3:.2f} ms, same bits: {same}")


if __name__ == "__main__":
    main()
