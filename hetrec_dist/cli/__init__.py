"""The `hetrec` command: one module per subcommand; user mistakes become one-line errors."""

import errno
import warnings

import click

from hetrec_dist import __version__
from hetrec_dist.data.folder_lock import release_reading
from hetrec_dist.errors import InputWarning, PerformanceWarning, UserError, is_out_of_memory

_python_show_warning = warnings.showwarning
# Errors of the place a file is read or written (a read-only folder or file system, permissions), whatever the
# command: each is a line naming the path, not a traceback
_PLACE_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, (InputWarning, PerformanceWarning)):
        click.echo(f"Warning: {message}", err=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


class _UserErrorsAsMessages(click.Group):
    """UserError becomes 'Error: ...', InputWarning and PerformanceWarning 'Warning: ...', one line each (a
    warning once); so do errors of the place a file is written (_PLACE_ERRORS) and memory that ran out."""

    def invoke(self, ctx):
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            warnings.simplefilter("default", InputWarning)
            try:
                return super().invoke(ctx)
            except UserError as err:  # one line, whatever a library's message it quotes holds
                raise click.ClickException(" ".join(str(err).split())) from None
            except Exception as err:
                if isinstance(err, OSError) and err.errno in _PLACE_ERRORS and err.filename:
                    raise click.ClickException(f"{err.filename}: {err.strerror}; give a place this user can "
                                               "write and read") from None
                if not is_out_of_memory(err):
                    raise
                raise click.ClickException(f"out of memory in `hetrec {ctx.invoked_subcommand}`: this machine's "
                                           "memory (or the process's limit) is too small for this input; see "
                                           "--help for options that lower it") from None
            finally:
                release_reading()


@click.group(cls=_UserErrorsAsMessages, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hetrec")
@click.option("--local_rank", "--local-rank", hidden=True, type=int,
              help="Passed by the deepspeed launcher; the rank's environment says the same (LOCAL_RANK).")
def main(local_rank):
    """Heterogeneous cryo-EM reconstruction with a sparse Fourier structural basis."""


def _register():
    from hetrec_dist.cli import (
        analyze,
        convert,
        evaluate,
        explore,
        export,
        fsc,
        inspect,
        launch,
        reconstruct,
        select,
        simulate,
        train,
        volume,
    )

    for module in (analyze, convert, evaluate, explore, export, fsc, inspect, launch, reconstruct, select, simulate,
                   train):
        main.add_command(module.command)
    main.add_command(volume.volume_command)
    main.add_command(volume.embed_command)


_register()
