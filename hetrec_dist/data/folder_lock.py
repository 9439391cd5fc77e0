"""An exclusive lock on a folder that a command writes (a training run, a particle store).

A POSIX record lock (fcntl.lockf) on FOLDER/.hetrec.lock: the kernel releases it when the process ends in
any way, so the lock of a process that died is simply taken over, and it holds across the nodes of a file
system that supports POSIX locks (local disks; NFS with its lock manager). The file says which host and
process hold it, for the message another command gets.

POSIX locks belong to the process: closing any descriptor of the lock file releases them, so nothing but
this class may open the file in a process that holds it.
"""

import fcntl
import os
import shutil
import socket

from hetrec_dist.errors import UserError

LOCK_NAME = ".hetrec.lock"


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
            lock_file = open(self.path, "a+")
        except OSError as err:
            raise UserError(f"{self.folder}: cannot write there ({err.strerror or err})") from None
        try:
            fcntl.lockf(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
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

    def release(self, remove: bool = False) -> None:
        """Let go of the lock; remove: delete the lock file first (when the folder is finished and any later
        command finds it complete anyway)."""
        if self.file is not None:
            if remove:
                os.remove(self.path)
            self.file.close()
            self.file = None


def empty_folder_but_its_lock(folder: str) -> None:
    """Remove everything in `folder` except the lock file (whose lock this process holds)."""
    for name in os.listdir(folder):
        if name != LOCK_NAME:
            path = os.path.join(folder, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def entries_but_the_lock(folder: str) -> list:
    """What a folder holds, the lock file aside ([] if it does not exist)."""
    return [name for name in os.listdir(folder) if name != LOCK_NAME] if os.path.isdir(folder) else []
