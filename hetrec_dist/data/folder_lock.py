"""An exclusive lock on a folder that a command writes (a training run, a particle store).

A POSIX record lock (fcntl.lockf) on FOLDER/.hetrec.lock: the kernel releases it when the process ends in
any way, so the lock of a process that died is simply taken over, and it holds across the nodes of a file
system that supports POSIX locks (local disks; NFS with its lock manager). The file says which host and
process hold it, for the message another command gets.

The lock file is opened without following links (O_NOFOLLOW): a link planted at its name is refused.

POSIX locks belong to the process: closing any descriptor of the lock file releases them, so nothing but
this class may open the file in a process that holds it.
"""

import errno
import fcntl
import os
import shutil
import socket

from hetrec_dist.errors import UserError

LOCK_NAME = ".hetrec.lock"
# Byte 0 of the lock file: the one writer. Byte 1: shared by the commands that read the folder, so that a
# writer that would replace its content (--overwrite) can tell they are there.
_WRITER_BYTE, _READERS_BYTE = 0, 1
_held_for_reading = []  # descriptors held until the command ends (release_reading)


class FolderLock:
    """Held from acquire() until release() or the end of the process."""

    def __init__(self, folder: str, what: str):
        self.folder, self.what = folder, what
        self.path = os.path.join(folder, LOCK_NAME)
        self.file = None

    def acquire(self) -> "FolderLock":
        """Take the lock, creating the folder if needed; a UserError naming the holder if another process
        has it."""
        try:
            os.makedirs(self.folder, exist_ok=True)
            # never through a link planted at the lock's name: opening it would truncate the link's target
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            lock_file = open(descriptor, "r+")
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise UserError(f"{self.path} is a symbolic link, not a lock file hetrec made; refusing to use "
                                "it (remove it if you trust this folder)") from None
            raise UserError(f"{self.folder}: cannot write there ({err.strerror or err})") from None
        try:
            fcntl.lockf(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _WRITER_BYTE)
        except OSError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "another process"
            lock_file.close()
            raise UserError(f"{self.folder} is in use by {holder}, which is writing this {self.what}; wait for it "
                            "to finish, or stop it first") from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        lock_file.flush()
        self.file = lock_file
        return self

    def check_no_readers(self) -> None:
        """With the lock held: a UserError where a command holds the folder for reading (hold_for_reading), as
        before replacing the folder's content."""
        try:
            fcntl.lockf(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _READERS_BYTE)
        except OSError:
            raise UserError(f"{self.folder} is being read by another hetrec command (analyze, eval, select, explore, "
                            f"…); wait for it to finish, or stop it (explore runs until Ctrl-C), before replacing "
                            f"this {self.what}") from None
        fcntl.lockf(self.file, fcntl.LOCK_UN, 1, _READERS_BYTE)

    def release(self, remove: bool = False) -> None:
        """Let go of the lock; remove: delete the lock file first (when the folder is finished and any later
        command finds it complete anyway)."""
        if self.file is not None:
            if remove:
                os.remove(self.path)
            self.file.close()
            self.file = None


def writer_of(folder: str) -> str | None:
    """Who holds `folder`'s writer lock ("process P on HOST"), or None where nobody does. Call it before
    hold_for_reading: it opens and closes the lock file, which drops this process's own locks on it."""
    try:
        descriptor = os.open(os.path.join(folder, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with open(descriptor) as lock_file:
        try:
            fcntl.lockf(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, _WRITER_BYTE)
        except OSError:
            return lock_file.read().strip() or "another process"
        fcntl.lockf(lock_file, fcntl.LOCK_UN, 1, _WRITER_BYTE)
        return None


def hold_for_reading(folder: str) -> None:
    """Mark `folder` as read by this process, until release_reading() or the process's end, so that an
    --overwrite of it is refused meanwhile (FolderLock.check_no_readers). Reading a folder that is being
    written is allowed (the writer's files are whole); where the lock file cannot be opened (a read-only
    folder, which nobody can replace) nothing is held."""
    path = os.path.join(folder, LOCK_NAME)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError:
        return
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, _READERS_BYTE)
    except OSError:
        pass  # a writer checking for readers this instant: it will see none; the descriptor stays open anyway
    _held_for_reading.append(descriptor)


def release_reading() -> None:
    """Let go of every folder hold_for_reading marked (when a command ends). Closing a descriptor drops all of
    this process's POSIX locks on that file, so call it only where this process writes none of those folders."""
    while _held_for_reading:
        os.close(_held_for_reading.pop())


def empty_folder_but_its_lock(folder: str) -> None:
    """Remove everything in `folder` except the lock file (whose lock this process holds)."""
    for name in os.listdir(folder):
        if name != LOCK_NAME:
            path = os.path.join(folder, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def entries_but_the_lock(folder: str) -> list:
    """What a folder holds, the lock file aside ([] if it does not exist)."""
    return [name for name in os.listdir(folder) if name != LOCK_NAME] if os.path.isdir(folder) else []
