"""hetrec fsc: Fourier shell correlation between two maps."""

import json

import click


def _read_map(path):
    import mrcfile

    from hetrec_dist.errors import UserError

    try:
        with mrcfile.open(path, permissive=True) as mrc:
            data, pixel = mrc.data, float(mrc.voxel_size.x)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable MRC map ({err})") from None
    if data is None or data.ndim != 3 or len(set(data.shape)) != 1:
        raise UserError(f"{path}: not a cubic 3-D map (shape {None if data is None else data.shape})")
    return data.astype("float64"), pixel


@click.command("fsc")
@click.argument("map_a", type=click.Path(dir_okay=False, exists=True))
@click.argument("map_b", type=click.Path(dir_okay=False, exists=True))
@click.option("--mask", help="'sphere' (soft, radius 0.45 box) or an MRC mask of the same box.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write the curve as a PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (with the curve) as JSON.")
def command(map_a, map_b, mask, plot_path, as_json):
    """FSC of MAP_A against MAP_B: the curve, resolution at 0.5 and 0.143, and the mean FSC."""
    from hetrec_dist.analysis.fsc import fsc_summary, soft_sphere
    from hetrec_dist.errors import UserError

    a, pixel_a = _read_map(map_a)
    b, pixel_b = _read_map(map_b)
    if a.shape != b.shape:
        raise UserError(f"the maps have different boxes: {a.shape[0]} ({map_a}) and {b.shape[0]} ({map_b})")
    if abs(pixel_a - pixel_b) > 1e-3 * max(pixel_a, pixel_b):
        raise UserError(f"the maps have different pixel sizes: {pixel_a:.4f} and {pixel_b:.4f} A")
    if mask:
        weights = soft_sphere(a.shape[0]) if mask == "sphere" else _read_map(mask)[0]
        if weights.shape != a.shape:
            raise UserError(f"{mask}: mask box {weights.shape[0]} differs from the maps' {a.shape[0]}")
        a, b = a * weights, b * weights
    result = fsc_summary(a, b, pixel_a)
    if plot_path:
        from hetrec_dist.analysis.plots import fsc_plot

        fsc_plot({"FSC": result["curve"]}, a.shape[0], pixel_a, plot_path)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"FSC=0.5 at {result['resolution_0.5_A']:.2f} A, FSC=0.143 at {result['resolution_0.143_A']:.2f} A, "
                   f"mean FSC {result['mean_fsc']:.3f}")
