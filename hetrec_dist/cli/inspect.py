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
def command(store, as_json):
    """Summarise the particle STORE: size, box, pixel size, chunking, compression, ranges of poses, shifts
    and defocus, optics groups, and whether its conversion finished."""
    from hetrec_dist.data.summary import store_summary

    summary = store_summary(store)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    width = max(map(len, summary))
    for key, value in summary.items():
        click.echo(f"{key:<{width}}  {_line(value)}")
