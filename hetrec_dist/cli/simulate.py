"""hetrec simulate: a synthetic heterogeneous dataset with ground truth (RELION STAR + MRCS)."""

import click

from hetrec_dist.cli.command_line import finite_floats, refuse_empty
from hetrec_dist.simulate.atom_models import ASSEMBLY_STATES


@click.command("simulate")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), callback=refuse_empty,
              help="Output folder.")
@click.option("--n", "n", type=click.IntRange(min=1), default=10000, show_default=True, help="Number of particles.")
@click.option("--box", "-D", type=click.IntRange(min=8), default=128, show_default=True,
              help="Box size (pixels, even).")
@click.option("--apix", "pixel_size_A", type=click.FloatRange(min=0, min_open=True), callback=finite_floats,
              help="Pixel size in Å (default: 128 Å / box).")
@click.option("--snr", type=click.FloatRange(min=0, min_open=True), default=[0.1], show_default=True,
              multiple=True, callback=finite_floats,
              help="Signal-to-noise ratio (variances over the whole box). Given several times, one optics group "
                   "each, the particles split evenly between them in order (sessions of unequal quality).")
@click.option("--noise-spectrum", type=click.Choice(["white", "falling"]), default="white", show_default=True,
              help="white, or falling: the noise power drops about tenfold from low frequencies to 5 Å, as "
                   "counting detectors record it.")
@click.option("--pose-error-deg", type=click.FloatRange(min=0), default=0.0, show_default=True,
              callback=finite_floats,
              help="Write poses rotated about a random axis by |N(0, this)| degrees (the truth stays in "
                   "ground_truth/poses.npz).")
@click.option("--shift-error-px", type=click.FloatRange(min=0), default=0.0, show_default=True,
              callback=finite_floats, help="Write shifts with N(0, this) pixels added.")
@click.option("--defocus-error-A", "defocus_error_A", type=click.FloatRange(min=0), default=0.0, show_default=True,
              callback=finite_floats,
              help="Write each particle's defocus (U and V alike) with N(0, this) Å added (the truth stays in "
                   "ground_truth/ctf.npz).")
@click.option("--astigmatism-error-A", "astigmatism_error_A", type=click.FloatRange(min=0), default=0.0,
              show_default=True, callback=finite_floats,
              help="Write each particle's astigmatism (the half-difference of U and V, along each of two axes "
                   "45° apart) with N(0, this) Å added.")
@click.option("--junk-fraction", type=click.FloatRange(min=0, max=1, max_open=True), default=0.0,
              show_default=True, help="Share of particles showing an unrelated compact object (ground_truth/junk.npy).")
@click.option("--defocus-min-A", "defocus_min_A", type=click.FloatRange(min=0, min_open=True), default=10000.0,
              show_default=True, callback=finite_floats, help="Smallest defocus (Å, underfocus).")
@click.option("--defocus-max-A", "defocus_max_A", type=click.FloatRange(min=0, min_open=True), default=25000.0,
              show_default=True, callback=finite_floats, help="Largest defocus (Å).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--atoms", type=click.Path(dir_okay=False, exists=True),
              help="PDB/mmCIF file to image instead of the built-in hinge.")
@click.option("--atoms-end", type=click.Path(dir_okay=False, exists=True),
              help="Second conformation of --atoms (same atoms) to move towards.")
@click.option("--assembly", is_flag=True,
              help="Simulate the built-in assembly instead of the hinge: a core and four peripheral subunits (A-D), "
                   "in discrete states that differ by which subunits are present; junk (--junk-fraction) is "
                   "then half loose subunits, half empty images.")
@click.option("--states", help="With --assembly: which subunits each state has and its share of the particles, "
                               f"e.g. 1111:60,1010:40 (default {ASSEMBLY_STATES}).")
@click.option("--atom-sigma", type=click.FloatRange(min=0, min_open=True), default=1.5, show_default=True,
              help="Gaussian width (Å) of --atoms atoms.")
@click.option("--n-maps", type=click.IntRange(min=2), default=5, show_default=True,
              help="Ground-truth maps along the coordinate.")
@click.option("--images-per-stack", type=click.IntRange(min=1), default=10000, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(out, atoms, atoms_end, assembly, states, atom_sigma, overwrite, quiet, **settings):
    """Simulate particles of an object that moves along a conformational coordinate in [0, 1], or (--assembly)
    of an assembly in discrete states of composition.

    Writes OUT/particles.star (RELION 3.1), OUT/stacks/*.mrcs and OUT/ground_truth/ (the coordinate of
    every particle, the true poses, which particles are junk, and maps at --n-maps coordinates; --assembly:
    each particle's state, and maps of each state, of the core and of each subunit). Images are
    real-space projections of Gaussian atoms at uniformly random orientations, with random shifts, an
    astigmatic CTF and Gaussian noise. The defaults make a box-128 dataset of 10,000 particles in about
    three minutes on 2 cores.
    """
    from hetrec_dist.errors import UserError
    from hetrec_dist.simulate.atom_models import assembly_model, hinge_model, structure_model
    from hetrec_dist.simulate.dataset import SimulationSettings, simulate_dataset

    if atoms_end and not atoms:
        raise UserError("--atoms-end needs --atoms")
    if states is not None and not assembly:
        raise UserError("--states needs --assembly")
    if assembly and atoms:
        raise UserError("--assembly and --atoms exclude each other")
    if assembly:
        model = assembly_model(ASSEMBLY_STATES if states is None else states)
    else:
        model = structure_model(atoms, atoms_end, atom_sigma) if atoms else hinge_model()
    result = simulate_dataset(out, model, SimulationSettings(**settings), overwrite, show_progress=not quiet)
    junk = f", {result['n_junk']} of them junk" if result["n_junk"] else ""
    snrs = settings["snr"]
    groups = f", {len(snrs)} optics groups (SNR {', '.join(f'{v:g}' for v in snrs)})" if len(snrs) > 1 else ""
    click.echo(f"wrote {result['n']} particles{junk}{groups} (box {result['box']}, {result['pixel_size_A']:.3f} Å/px) "
               f"to {out}", err=True)
    empty = [i for i, size in enumerate(result["state_sizes"] or []) if size == 0]
    if empty:
        click.echo(f"Warning: state(s) {', '.join(map(str, empty))} drew no particles (each particle takes a state "
                   "at random by the shares of --states); ground_truth/ keeps their maps, and `hetrec eval` leaves "
                   "them out", err=True)
    if settings["junk_fraction"] and result["n_junk"] in (0, result["n"]):
        click.echo(f"Warning: --junk-fraction {settings['junk_fraction']:g} drew {result['n_junk']} junk particles "
                   f"of {result['n']} (each particle is junk at random with that chance)", err=True)
