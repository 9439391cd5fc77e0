"""hetrec inspect: what a particle store holds."""

import json

import click


def _line(value):
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"{value[0]:.4g} .. {value[1]:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@click.command("inspect")
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--verify", is_flag=True,
              help="Also read every images-chunk back and check it against what its conversion recorded.")
def command(store, as_json, verify):
    """Summarise the particle STORE: size, box, pixel size, chunking, compression, ranges of poses, shifts
    and defocus, optics groups, and whether its conversion finished. With --verify, exit status 1 names
    every damaged or missing chunk."""
    from hetrec_dist.data.summary import damaged_chunks, store_summary
    from hetrec_dist.errors import UserError

    summary = store_summary(store)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    width = max(map(len, summary))
    for key, value in summary.items():
        click.echo(f"{key:<{width}}  {_line(value)}")
    if verify:
        checked, damaged = damaged_chunks(store, show_progress=not as_json)
        if damaged:
            listed = "; ".join(f"chunk {chunk} (particles {start} to {stop - 1}): {what}"
                               for chunk, start, stop, what in damaged)
            raise UserError(f"{store}: {len(damaged)} of {checked} chunks are damaged or missing: {listed}; "
                            "convert the store again with --overwrite")
        click.echo(f"verified {checked} chunks: each holds what was written", err=True)
