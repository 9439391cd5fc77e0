"""Writing maps for ChimeraX and friends."""

import os

import mrcfile
import numpy as np
import torch


def write_map(path, volume, pixel_size_A):
    """An MRC map [z, y, x] with the pixel size in its header, written atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with mrcfile.new(path + ".tmp", overwrite=True) as mrc:
        mrc.set_data(np.asarray(volume, dtype=np.float32))
        mrc.voxel_size = pixel_size_A
    os.replace(path + ".tmp", path)


@torch.no_grad()
def write_latent_maps(model, latents, directory, name_format):
    """The model's map for each latent row, as directory/name_format.format(i); returns the file names."""
    names = []
    for i, latent in enumerate(torch.from_numpy(np.asarray(latents, dtype=np.float32)).to(model.basis.device)):
        names.append(name_format.format(i))
        write_map(os.path.join(directory, names[-1]), model.volume(latent).cpu().numpy(), model.pixel_size_A)
    return names
