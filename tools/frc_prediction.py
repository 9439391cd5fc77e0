"""How well a trained run's predictions match its images, per Fourier shell: the Fourier ring correlation
of data and prediction, and the data's and the residual's mean power (images normalised as in training).

    python tools/frc_prediction.py RUN STORE [--images 2048]

Where the images hold no signal, a model that does not fit noise gives FRC near 0; an FRC that rises with
frequency there means the model (through its latents) fits each image's noise (docs/benchmarks.md, issue 14).
"""

import argparse

import torch

from hetrec_dist.data.reader import ChunkShuffledParticles
from hetrec_dist.train.checkpoint import last_checkpoint, load_checkpoint
from hetrec_dist.train.inference import load_model


def shell_sums(run, store, n_images, batch_size=512):
    model = load_model(load_checkpoint(last_checkpoint(run), "cpu"))
    model.eval()
    shells = torch.round(model.disk.coords.norm(dim=1)).long()
    sums = torch.zeros(4, int(shells.max()) + 1, dtype=torch.float64)  # cross, data, prediction, residual
    seen = 0
    with torch.no_grad():
        for batch in ChunkShuffledParticles(store, batch_size, shuffle=False):
            out = model(batch)
            observed, predicted = out["observed"], out["predicted"]
            terms = ((observed * predicted.conj()).real, observed.abs() ** 2, predicted.abs() ** 2,
                     out["residual_power"])
            for row, term in enumerate(terms):
                sums[row].index_add_(0, shells, term.double().sum(0))
            seen += len(observed)
            if seen >= n_images:
                break
    counts = torch.bincount(shells, minlength=sums.shape[1]).double() * seen
    return model, sums, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("store")
    parser.add_argument("--images", type=int, default=2048)
    args = parser.parse_args()
    model, (cross, data, predicted, residual), counts = shell_sums(args.run, args.store, args.images)
    frc = cross / (data * predicted).sqrt().clamp(min=1e-30)
    box_A = model.shape.box * model.pixel_size_A
    print("shell  resolution_A  FRC(data, prediction)  data_power  residual_power")
    for shell in range(1, len(frc), max(1, len(frc) // 16)):
        print(f"{shell:5d}  {box_A / shell:12.1f}  {frc[shell]:21.3f}  {data[shell] / counts[shell]:10.3f}  "
              f"{residual[shell] / counts[shell]:14.3f}")


if __name__ == "__main__":
    main()
