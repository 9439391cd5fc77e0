"""hetrec convert: particle images and their metadata to a Zarr particle store."""

import click

from hetrec_dist.cli.command_line import finite_floats, refuse_empty, reproducible_command
from hetrec_dist.data.store import IMAGE_DTYPES


@click.command("convert")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(), callback=refuse_empty,
              help="The store to write (a folder, e.g. particles.zarr).")
@click.option("--datadir", type=click.Path(file_okay=False), help="Folder with the image stacks, if not beside INPUT.")
@click.option("--poses", type=click.Path(dir_okay=False), multiple=True,
              help="cryoDRGN poses.pkl (for .mrcs/.txt input); give it twice for separate rotation and "
                   "translation pickles.")
@click.option("--ctf", type=click.Path(dir_okay=False), help="cryoDRGN ctf.pkl (for .mrcs/.txt input).")
@click.option("--passthrough", type=click.Path(dir_okay=False),
              help="cryoSPARC JNN_passthrough_particles.cs with the blob/ctf fields the .cs lacks (found beside "
                   "it if not given).")
@click.option("--optics-group", "optics_groups", type=int, multiple=True,
              help="Convert only this optics group (rlnOpticsGroup, ctf/exp_group_id); repeat for several.")
@click.option("--box", "-D", type=click.IntRange(min=8), help="Downsample to this even box by Fourier cropping.")
@click.option("--apix", type=click.FloatRange(min=0, min_open=True), callback=finite_floats,
              help="Pixel size (Å), replacing the input's.")
@click.option("--voltage-kv", type=click.FloatRange(min=0, min_open=True), callback=finite_floats,
              help="Voltage (kV), filling or replacing the input's.")
@click.option("--cs-mm", type=click.FloatRange(min=0), callback=finite_floats,
              help="Spherical aberration (mm), filling or replacing the input's.")
@click.option("--amplitude-contrast", type=click.FloatRange(min=0, max=1, max_open=True), callback=finite_floats,
              help="Amplitude contrast (fraction), filling or replacing the input's.")
@click.option("--phase-shift-deg", type=float, callback=finite_floats,
              help="Phase shift (°), filling or replacing the input's (missing = 0).")
@click.option("--dtype", type=click.Choice(IMAGE_DTYPES), default="float32", show_default=True,
              help="Stored image precision.")
@click.option("--chunk-images", type=click.IntRange(min=1), help="Images per chunk (default: about 4 MiB a chunk).")
@click.option("--contrast", type=click.Choice(("auto", "white", "dark")), default="auto", show_default=True,
              help="The particles' contrast in INPUT: auto measures it from the images (protein brighter or "
                   "darker than the solvent once the CTF's sign is undone); dark particles are stored negated, "
                   "white as RELION's (docs/inputs.md).")
@click.option("--invert-contrast", is_flag=True, hidden=True, help="The same as --contrast dark (hetrec 0.1).")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no warnings.")
def command(input_path, out, quiet, **options):
    """Convert INPUT to a chunked, compressed Zarr particle store.

    INPUT is a RELION particle .star file, a cryoSPARC particle .cs file (with its passthrough .cs), or an
    .mrcs stack (or a .txt list of stacks) with cryoDRGN --poses and --ctf pickles. Where the input and its
    stacks disagree, a documented rule decides and a warning says so, or the input is refused
    (docs/inputs.md). A killed conversion resumes when the same command is run again. Under `mpiexec -n N`
    the ranks write disjoint chunks of one store.
    """
    import logging
    import warnings

    from hetrec_dist.data.convert import ConvertOptions, convert
    from hetrec_dist.distributed.mpi_world import mpi_world
    from hetrec_dist.errors import InputWarning, UserError

    if options.pop("invert_contrast"):
        if options["contrast"] == "white":
            raise UserError("--invert-contrast and --contrast white contradict each other; give one")
        options["contrast"] = "dark"
    if len(options["poses"]) > 2:
        raise UserError("--poses: give one poses.pkl, or a rotations pickle and a translations pickle")
    if quiet:
        warnings.simplefilter("ignore", InputWarning)
    try:
        world = mpi_world()
        result = convert(input_path, out, ConvertOptions(**options), world, command=reproducible_command(),
                         show_progress=not quiet)
    except KeyboardInterrupt:
        # zarr's I/O loop still holds the interrupted writes: at exit asyncio would log each as "Task was
        # destroyed but it is pending!", burying the one line that says how to resume
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        raise UserError(f"stopped; {out} is unfinished: run the same command again to resume") from None
    if not quiet and result is not None and world.is_root:  # one line, not one a rank
        rate = (result["n_particles"] - result["resumed_from"]) / max(result["seconds"], 1e-9)
        click.echo(f"wrote {result['n_particles']} particles to {out} ({rate:.0f} images/s)", err=True)
