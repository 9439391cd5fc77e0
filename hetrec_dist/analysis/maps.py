"""The model's maps at chosen latents, as MRC files."""

import os

import numpy as np
import torch

from hetrec_dist.data.map_files import write_map


@torch.no_grad()
def write_latent_maps(model, latents, directory, name_format, pictures=None, half_maps=False):
    """The model's map for each latent row, as directory/name_format.format(i); returns the file names.
    pictures: a list to append each map's map_pictures to (None: none made). half_maps: also each half-set's
    map beside it, NAME_half1.mrc and NAME_half2.mrc (a model trained with half-sets)."""
    names = []
    for i, latent in enumerate(torch.from_numpy(np.asarray(latents, dtype=np.float32)).to(model.basis.device)):
        names.append(name_format.format(i))
        volume = model.volume(latent).cpu().numpy()
        write_map(os.path.join(directory, names[-1]), volume, model.pixel_size_A)
        for half_set in (1, 2) if half_maps else ():
            stem, extension = os.path.splitext(names[-1])
            write_map(os.path.join(directory, f"{stem}_half{half_set}{extension}"),
                      model.volume(latent, half_set).cpu().numpy(), model.pixel_size_A)
        if pictures is not None:
            pictures.append(map_pictures(volume))
    return names


def central_sections(volume):
    """The central sections of a D x D x D map (MRC order: z, y, x) normal to z, y and x (each D x D)."""
    centre = volume.shape[0] // 2
    return volume[centre], volume[:, centre], volume[:, :, centre]


def map_pictures(volume):
    """Views of a D x D x D map (MRC order: z, y, x): the central sections normal to z, y and x, and the
    projection along z (each D x D, float32)."""
    section_z, section_y, section_x = central_sections(volume)
    return {"section z": section_z, "section y": section_y, "section x": section_x, "projection z": volume.sum(0)}


def chimerax_level(volume, enclosed_fraction=0.05):
    """A threshold for a surface that encloses `enclosed_fraction` of the box (the maps' envelope mask keeps
    about 10% of it on our benchmark, so 5% shows the molecule without its weakest density)."""
    return float(np.quantile(volume, 1 - enclosed_fraction))
