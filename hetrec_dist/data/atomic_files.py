"""Files written whole or not at all, and a full disk said in one line.

A file is written to PATH.tmp-PID and renamed to PATH once complete, so that a reader never sees half of
it and a kill leaves at most a temporary, which remove_temporaries() clears at the next start. A write that
fails for want of space removes its temporary and becomes a UserError naming the file.
"""

import contextlib
import errno
import glob
import os
import shutil
from collections.abc import Callable, Iterator

import numpy as np

from hetrec_dist.errors import UserError

TEMPORARY_MARK = ".tmp-"
# torch's checkpoint writer reports a full disk as a RuntimeError without its errno: below this much free
# space, a failed write is taken for one.
NEARLY_FULL_BYTES = 64 * 2 ** 20


def disk_is_full(error: BaseException, path: str) -> bool:
    """Whether `error`, raised while writing `path`, comes from a full file system (or a quota)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not (isinstance(error, RuntimeError) and ("write" in str(error) or "unexpected pos" in str(error))):
        return False
    try:
        return shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free < NEARLY_FULL_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def full_disk_as_user_error(path: str) -> Iterator[None]:
    """Within it, a write that fails for want of space is a UserError naming `path`."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        if not disk_is_full(error, path):
            raise
        raise UserError(f"no space left on device while writing {path}; free some space and run the same "
                        "command again") from None


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """write(temporary) makes the file's content; it becomes `path` once whole. On failure the temporary is
    removed; a full disk is a UserError naming `path`."""
    temporary = f"{path}{TEMPORARY_MARK}{os.getpid()}"
    with full_disk_as_user_error(path):
        try:
            write(temporary)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
            raise


def save_array(path: str, array) -> None:
    """np.save of `array` to `path` (.npy), written whole or not at all (write_atomically)."""
    def write(temporary):
        with open(temporary, "wb") as f:  # a file object: np.save would add .npy to the temporary's name
            np.save(f, array)

    write_atomically(path, write)


def remove_temporaries(folder: str) -> list:
    """Remove the temporaries that killed writers left in `folder` (call it only while holding the folder's
    lock, so that no live writer's temporary goes); returns their paths."""
    left = glob.glob(os.path.join(glob.escape(folder), f"*{TEMPORARY_MARK}*"))
    for path in left:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    return left
