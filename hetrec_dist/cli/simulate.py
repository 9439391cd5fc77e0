"""hetrec simulate: a synthetic heterogeneous dataset with ground truth (RELION STAR + MRCS)."""

import click

from hetrec_dist.cli.command_line import refuse_empty


@click.command("simulate")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), callback=refuse_empty,
              help="Output folder.")
@click.option("--n", "n", type=click.IntRange(min=1), default=10000, show_default=True, help="Number of particles.")
@click.option("--box", "-D", type=click.IntRange(min=8), default=64, show_default=True, help="Box size (pixels, even).")
@click.option("--apix", type=click.FloatRange(min=0, min_open=True), help="Pixel size in A (default: 128 A / box).")
@click.option("--snr", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="Signal-to-noise ratio.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--atoms", type=click.Path(dir_okay=False, exists=True),
              help="PDB/mmCIF file to image instead of the built-in hinge.")
@click.option("--atoms-end", type=click.Path(dir_okay=False, exists=True),
              help="Second conformation of --atoms (same atoms) to move towards.")
@click.option("--atom-sigma", type=click.FloatRange(min=0, min_open=True), default=1.5, show_default=True,
              help="Gaussian width (A) of --atoms atoms.")
@click.option("--n-maps", type=click.IntRange(min=2), default=5, show_default=True,
              help="Ground-truth maps along the coordinate.")
@click.option("--images-per-stack", type=click.IntRange(min=1), default=10000, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(out, n, box, apix, snr, seed, atoms, atoms_end, atom_sigma, n_maps, images_per_stack, overwrite, quiet):
    """Simulate particles of an object that moves along a conformational coordinate in [0, 1].

    Writes OUT/particles.star (RELION 3.1), OUT/stacks/*.mrcs and OUT/ground_truth/ (the coordinate of
    every particle and maps at --n-maps coordinates). Images are real-space projections of Gaussian atoms
    at uniformly random orientations, with random shifts, an astigmatic CTF and white noise.
    """
    from hetrec_dist.errors import UserError
    from hetrec_dist.simulate.atom_models import hinge_model, structure_model
    from hetrec_dist.simulate.dataset import simulate_dataset

    if atoms_end and not atoms:
        raise UserError("--atoms-end needs --atoms")
    model = structure_model(atoms, atoms_end, atom_sigma) if atoms else hinge_model()
    result = simulate_dataset(out, model, n, box, apix, snr, seed, images_per_stack, n_maps, overwrite,
                              show_progress=not quiet)
    click.echo(f"wrote {result['n']} particles (box {result['box']}, {result['pixel_size_A']:.3f} A/px) to {out}",
               err=True)
