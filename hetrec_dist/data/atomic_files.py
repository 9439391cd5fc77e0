"""Files written whole or not at all, never through a planted link, and a full disk said in one line.

A file is written inside a new private folder PATH.tmp-PID-XXXX (mkdtemp: mode 0700, a fresh name, so nobody
else can place a link where the writer opens) and renamed to PATH once complete: a reader never sees half of
it, a kill leaves at most a temporary, which remove_temporaries() clears at the next start, and a link planted
at PATH is replaced, not followed (rename acts on the name). A write that fails for want of space removes its
temporary and becomes a UserError naming the file. Logs are appended with O_NOFOLLOW (open_log).
"""

import contextlib
import errno
import glob
import os
import pickle
import shutil
import tempfile
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
    """write(temporary) makes the file's content at the path it is given; it becomes `path` once whole. On
    failure the temporary is removed; a full disk, a read-only or missing folder is a UserError naming
    `path`."""
    folder, name = os.path.split(os.path.abspath(path))
    with full_disk_as_user_error(path):
        try:
            private = tempfile.mkdtemp(prefix=f"{name}{TEMPORARY_MARK}{os.getpid()}-", dir=folder)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR):
                raise
            raise UserError(f"{path}: cannot write there ({err.strerror})") from None
        try:
            temporary = os.path.join(private, name)
            write(temporary)
            os.replace(temporary, path)
        finally:
            shutil.rmtree(private, ignore_errors=True)


def refuse_link(folder: str) -> None:
    """A UserError where `folder`, which a command is about to write into (or empty), is a symbolic link: one
    planted in a shared folder would take the writes, or an --overwrite's deletions, to its target."""
    if os.path.islink(folder):
        raise UserError(f"{folder} is a symbolic link; hetrec writes into folders themselves, never through a "
                        "link (give the folder it points to, if it is yours)")


def write_text(path: str, text: str) -> None:
    """A text file (UTF-8), written whole or not at all (write_atomically)."""
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomically(path, write)


def open_log(path: str):
    """`path` opened to append text lines (created 0666 less the umask), refusing to follow a link planted
    there: OSError (ELOOP) if `path` is a symbolic link."""
    return open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666), "a",
                encoding="utf-8")


def save_pickle(path: str, value) -> None:
    """pickle.dump of `value` to `path`, written whole or not at all (write_atomically): the pickles the field
    expects of us (cryoDRGN's z.pkl, index .pkl and poses.pkl), of numpy arrays only."""
    def write(temporary):
        with open(temporary, "wb") as f:
            pickle.dump(value, f)

    write_atomically(path, write)


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
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    return left
