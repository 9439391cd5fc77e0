"""The command line that reproduces the current command, from its parsed parameters."""

import math
import os
import shlex

import click


def refuse_empty(ctx, param, value):
    """A click callback for output paths: an empty one would mean the current folder, which a command that
    replaces its output must never take for it."""
    if value is not None and not str(value).strip():
        raise click.BadParameter("an empty path; name the output")
    return value


PLOT_FORMATS = (".png", ".pdf", ".svg")


def plot_file(ctx, param, value):
    """A click callback for a plot's path: an image format matplotlib writes, in a folder that exists."""
    from hetrec_dist.errors import UserError

    if value is None:
        return value
    if os.path.splitext(value)[1].lower() not in PLOT_FORMATS:
        raise UserError(f"--plot {value}: write a {', '.join(PLOT_FORMATS)} file")
    if not os.path.isdir(os.path.dirname(os.path.abspath(value))):
        raise UserError(f"--plot {value}: its folder does not exist")
    return value


def finite_floats(ctx, param, value):
    """A click callback: nan and inf pass click's FloatRange, and are no value a user means (value: a float,
    None, or a tuple of floats from a multiple option)."""
    for number in value if isinstance(value, tuple) else (value,):
        if number is not None and not math.isfinite(number):
            raise click.BadParameter(f"{number} is not a number")
    return value


def reproducible_command():
    """'hetrec SUBCOMMAND ARGS --option value ...' with every parameter that differs from its default
    (--quiet left out)."""
    ctx = click.get_current_context()
    words = ["hetrec", ctx.info_name]
    for param in ctx.command.params:
        if param.name == "quiet":
            continue
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif getattr(param, "multiple", False):
            for item in value or ():
                words += [param.opts[-1], str(item)]
        elif value not in (None, False) and value != param.default:
            words += [param.opts[-1]] if param.is_flag else [param.opts[-1], str(value)]
    return shlex.join(words)


# --store on the commands that read a run's particles: the run's store where it was moved or copied
moved_store_option = click.option(
    "--store", type=click.Path(exists=True, file_okay=False),
    help="The run's particle store where it was moved or copied (default: the one config.yaml names); it must "
         "hold the same particles, which is checked.")
