"""The GPU check in one run (tools/device_check.sh sets up the packages first and calls this).

    python tools/device_check.py --device cuda --out OUT [--work /tmp/device_check] [--scale 1]

Steps, each timed, each recorded even when an earlier one failed:
1. environment: torch, CUDA, the device;
2. projector: slices, sparse basis gradient and weights gradient on the device (PyTorch's path) against the
   CPU's (the compiled loops), on random float32 inputs at box 64 and 128 (relative to each quantity's
   largest value; float32 tolerance 1e-4);
3. train two epochs on a simulated box-128 store (4,096 particles x scale), then on a box-256 one (2,048 x
   scale): the second epoch's images/s, the step split (TensorBoard's time/*, its first step left out) and
   the peak device memory (perf/peak_memory_MiB; on the CPU, the peak RSS);
4. `make demo`'s run against its ground truth (4,000 particles, box 64, SNR 0.1, configs/demo.yaml):
   mean FSC and PC1 |Spearman|, which the CPU gives as 0.517 and 0.897, so that a wrong result shows.
OUT/device_check.json is rewritten after every step; "ok" is true when every step passed.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback

import numpy as np
import torch

TOLERANCE = 1e-4


def environment(device):
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(name=properties.name, memory_GiB=round(properties.total_memory / 2 ** 30, 1),
                    capability=f"{properties.major}.{properties.minor}", cuda=torch.version.cuda)
    return info


def projector(device, boxes=(64, 128), n_images=64, n_components=17):
    from hetrec_dist.physics.fourier_grid import HalfBall, HalfDisk
    from hetrec_dist.physics.projector import project, slice_geometry
    from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler

    results = {}
    for box in boxes:
        generator = torch.Generator().manual_seed(box)
        half_ball, disk = HalfBall.build(box / 2 - 1), HalfDisk.build(box, box / 2 - 1)
        rotations = torch.from_numpy(matrices_from_relion_euler(*random_relion_euler(n_images,
                                                                                      np.random.default_rng(box))))
        basis = torch.randn(half_ball.n_voxels, 2 * n_components, generator=generator)
        weights = torch.randn(n_images, n_components, generator=generator)
        upstream = torch.randn(n_images, disk.coords.shape[0], 2, generator=generator)
        outputs = []
        # the CPU's compiled loops against the device's PyTorch path (on a CPU dry run: the CPU's PyTorch path)
        for where, compiled in ((torch.device("cpu"), "1"), (device, "0")):
            os.environ["HETREC_COMPILED_KERNELS"] = compiled
            b, w = basis.clone().to(where).requires_grad_(), weights.clone().to(where).requires_grad_()
            geometry = slice_geometry(rotations.float().to(where), disk.coords.to(where), half_ball.to(where))
            slices = project(b, w, geometry)
            (slices * upstream.to(where)).sum().backward()
            outputs.append({"slices": slices.detach().cpu(), "basis_gradient": b.grad.to_dense().cpu(),
                            "weights_gradient": w.grad.cpu()})
        os.environ.pop("HETREC_COMPILED_KERNELS")
        errors = {name: float((outputs[1][name] - value).abs().max() / value.abs().max())
                  for name, value in outputs[0].items()}
        results[f"box_{box}"] = {"relative_error": errors, "ok": max(errors.values()) < TOLERANCE}
    results["ok"] = all(result["ok"] for result in results.values())
    return results


def hetrec(*args):
    command = [sys.executable, "-m", "hetrec_dist.cli", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def simulated_store(work, n, box, snr):
    sim, store = os.path.join(work, f"sim_{box}_{n}_{snr}"), os.path.join(work, f"p_{box}_{n}_{snr}.zarr")
    if not os.path.exists(os.path.join(sim, "particles.star")):
        hetrec("simulate", "-o", sim, "--n", n, "--box", box, "--snr", snr, "--seed", 0, "-q", "--overwrite")
    if not os.path.exists(os.path.join(store, "zarr.json")):
        hetrec("convert", os.path.join(sim, "particles.star"), "-o", store, "-q", "--overwrite")
    return sim, store


def tensorboard_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(run, "tb"), size_guidance={"scalars": 0}).Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def train_epoch(device, work, box, n):
    _, store = simulated_store(work, n, box, 0.05)
    run, config = os.path.join(work, f"run_{box}"), os.path.join(work, "every_step.yaml")
    with open(config, "w") as handle:
        handle.write("log_every: 1\n")  # TensorBoard's step split and peak memory at every step
    started = time.perf_counter()
    hetrec("train", store, "-o", run, "--epochs", 2, "--device", device, "--config", config, "-q", "--overwrite")
    wall_s = time.perf_counter() - started
    lines = [line for line in open(os.path.join(run, "train.log")) if "images_per_s" in line]
    scalars = tensorboard_scalars(run)
    split = {tag.split("/", 1)[1]: float(np.mean(values[1:] or values))
             for tag, values in scalars.items() if tag.startswith("time/")}
    return {"box": box, "particles": n, "images_per_s": float(lines[-1].rsplit("images_per_s", 1)[1]),
            "step_split_s": split, "peak_memory_MiB": max(scalars["perf/peak_memory_MiB"]),
            "wall_s_with_start": round(wall_s, 1), "ok": True}


def short_evaluation(device, work):
    sim, store = simulated_store(work, 4000, 64, 0.1)
    run = os.path.join(work, "run_eval")
    hetrec("train", store, "-o", run, "--config", "configs/demo.yaml", "--device", device, "--gt",
           os.path.join(sim, "ground_truth"), "-q", "--overwrite")
    with open(os.path.join(run, "eval.json")) as handle:
        scores = json.load(handle)
    kept = ("mean_fsc", "mean_resolution_0.5_A", "latent_pc1_spearman", "latent_linear_r2", "epoch")
    ok = scores["mean_fsc"] > 0.45 and scores["latent_pc1_spearman"] > 0.8  # the CPU: 0.517, 0.897
    return {**{key: scores[key] for key in kept}, "ok": ok}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/device_check")
    parser.add_argument("--scale", type=float, default=1.0, help="Particles of step 3 x this (e.g. 0.25 on a CPU).")
    args = parser.parse_args()
    device = torch.device(args.device)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    steps = [("environment", lambda: environment(device)), ("projector", lambda: projector(device)),
             ("train_box_128", lambda: train_epoch(args.device, args.work, 128, int(4096 * args.scale))),
             ("train_box_256", lambda: train_epoch(args.device, args.work, 256, int(2048 * args.scale))),
             ("evaluation", lambda: short_evaluation(args.device, args.work))]
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}
    for name, step in steps:
        started = time.perf_counter()
        try:
            result = step()
        except Exception:
            result = {"ok": False, "error": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - started, 1)
        report["steps"][name] = result
        report["ok"] = all(step.get("ok", True) for step in report["steps"].values())
        print(name, json.dumps(result), flush=True)
        with open(os.path.join(args.out, "device_check.json"), "w") as handle:
            json.dump(report, handle, indent=2)
    print("device check", "passed" if report["ok"] else "FAILED", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
