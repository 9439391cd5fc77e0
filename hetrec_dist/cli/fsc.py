"""hetrec fsc: Fourier shell correlation between two maps."""

import json
import os

import click

from hetrec_dist.cli.command_line import plot_file


@click.command("fsc")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True), metavar="MAP_A MAP_B | RUN")
@click.option("--z", "z_path", type=click.Path(dir_okay=False, exists=True),
              help="With RUN (trained with --half-sets): latents, one row per map (.npy or text), at which to "
                   "compare the two half-maps.")
@click.option("--checkpoint", type=click.Path(exists=True), help="With RUN: a checkpoint (default: its last.pt).")
@click.option("--device", default="auto", show_default=True)
@click.option("--mask", help="Two maps: 'sphere' (soft, radius 0.45 box) or an MRC mask of the same box.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), callback=plot_file,
              help="Write the curve(s) as a PNG (or .pdf, .svg).")
@click.option("--json", "as_json", is_flag=True, help="Print the result (with the curves) as JSON.")
def command(inputs, z_path, checkpoint, device, mask, plot_path, as_json):
    """FSC of MAP_A against MAP_B: the curve, resolution at 0.5 and 0.143, and the mean FSC.

    `hetrec fsc RUN --z LATENTS`: for a run trained with --half-sets, the FSC of its two half-maps at each
    latent row, and the gold-standard resolution (FSC = 0.143) of the map there."""
    from hetrec_dist.errors import UserError

    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        if not z_path:
            raise UserError(f"{inputs[0]} is a run: give --z with the latents at which to compare its half-maps")
        if mask:
            raise UserError("--mask is for two maps; a run's half-maps are confined by its own mask")
        _run_half_maps(inputs[0], z_path, checkpoint, device, plot_path, as_json)
    elif len(inputs) == 2 and not any(os.path.isdir(path) for path in inputs):
        if z_path or checkpoint:
            raise UserError("--z and --checkpoint are for a run (`hetrec fsc RUN --z LATENTS`), not two maps")
        _two_maps(*inputs, mask, plot_path, as_json)
    else:
        raise UserError(f"give two maps (MAP_A MAP_B) or one run folder (RUN --z LATENTS), not {' '.join(inputs)}")


def _two_maps(map_a, map_b, mask, plot_path, as_json):
    from hetrec_dist.analysis.fsc import fsc_summary, soft_sphere
    from hetrec_dist.data.map_files import read_user_map
    from hetrec_dist.errors import UserError

    a, pixel_a = read_user_map(map_a)
    b, pixel_b = read_user_map(map_b)
    (a, pixel_a), (b, pixel_b) = _same_box((a, pixel_a, map_a), (b, pixel_b, map_b))
    if abs(pixel_a - pixel_b) > 1e-3 * max(pixel_a, pixel_b):
        raise UserError(f"the maps have different pixel sizes: {pixel_a:.4f} and {pixel_b:.4f} Å")
    if mask:
        weights = soft_sphere(a.shape[0]) if mask == "sphere" else read_user_map(mask)[0]
        if weights.shape != a.shape:
            raise UserError(f"{mask}: mask box {weights.shape[0]} differs from the maps' {a.shape[0]}")
        if not (weights > 0).any():
            raise UserError(f"{mask}: the mask keeps nothing (no value above 0)")
        a, b = a * weights, b * weights
    result = fsc_summary(a, b, pixel_a)
    if plot_path:
        from hetrec_dist.analysis.plots import fsc_plot

        fsc_plot({"FSC": result["curve"]}, a.shape[0], pixel_a, plot_path)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"FSC=0.5 at {result['resolution_0.5_A']:.2f} Å, FSC=0.143 at {result['resolution_0.143_A']:.2f} Å, "
                   f"mean FSC {result['mean_fsc']:.3f}")


def _same_box(first, second):
    """Two maps (data, pixel size, path) on one box: where their boxes differ but not their extent (box x pixel
    size, as a run's map and a simulation's full-size truth), the larger is Fourier-cropped to the smaller's
    box, as `hetrec eval` does, with a line saying so. UserError where the extents differ."""
    from hetrec_dist.errors import UserError
    from hetrec_dist.physics.fourier import fourier_crop

    (a, pixel_a, path_a), (b, pixel_b, path_b) = first, second
    if a.shape == b.shape:
        return (a, pixel_a), (b, pixel_b)
    extent_a, extent_b = a.shape[0] * pixel_a, b.shape[0] * pixel_b
    if abs(extent_a - extent_b) > 1e-3 * max(extent_a, extent_b):
        raise UserError(f"the maps have different boxes: {a.shape[0]} x {pixel_a:.4g} Å ({path_a}) and "
                        f"{b.shape[0]} x {pixel_b:.4g} Å ({path_b}), {extent_a:.1f} and {extent_b:.1f} Å across")
    (small, _, _), (large, _, large_path) = sorted([first, second], key=lambda m: m[0].shape[0])
    cropped = fourier_crop(large, small.shape[0], ndim=3)
    pixel = large.shape[0] * (pixel_a if large is a else pixel_b) / small.shape[0]
    click.echo(f"{large_path}: Fourier-cropped from box {large.shape[0]} to {small.shape[0]} (the same "
               f"{extent_a:.1f} Å across), as hetrec eval does", err=True)
    return ((cropped, pixel), (b, pixel_b)) if large is a else ((a, pixel_a), (cropped, pixel))


def _run_half_maps(run, z_path, checkpoint, device, plot_path, as_json):
    from hetrec_dist.analysis.half_maps import describe_resolution, latent_resolution, require_half_sets
    from hetrec_dist.cli.run_files import run_model
    from hetrec_dist.cli.volume import read_latents

    model = run_model(run, checkpoint, device)
    require_half_sets(model, run)
    results = [latent_resolution(model, latent) for latent in read_latents(z_path, model.shape.zdim)]
    if plot_path:
        from hetrec_dist.analysis.plots import fsc_plot

        fsc_plot({f"latent {i}": r["curve"] for i, r in enumerate(results)}, model.shape.box, model.pixel_size_A,
                 plot_path, joined_A=model.half_sets_join_A)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for i, result in enumerate(results):
        click.echo(f"latent {i}: half-map FSC=0.143 at {describe_resolution(result)}, FSC=0.5 at "
                   f"{result['resolution_0.5_A']:.2f} Å")
