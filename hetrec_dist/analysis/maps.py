"""The model's maps at chosen latents, as MRC files."""

import os

import numpy as np
import torch

from hetrec_dist.data.map_files import write_map


@torch.no_grad()
def write_latent_maps(model, latents, directory, name_format):
    """The model's map for each latent row, as directory/name_format.format(i); returns the file names."""
    names = []
    for i, latent in enumerate(torch.from_numpy(np.asarray(latents, dtype=np.float32)).to(model.basis.device)):
        names.append(name_format.format(i))
        write_map(os.path.join(directory, names[-1]), model.volume(latent).cpu().numpy(), model.pixel_size_A)
    return names
