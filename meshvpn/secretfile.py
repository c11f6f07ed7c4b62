"""Secret files on disk: written atomically with mode 0600, refused when too open.

Key material must never be half-written (a crash mid-write would leave a node
without its identity) and never readable by anyone but its owner.
"""

import os
import stat

from meshvpn.errors import KeyFileError


def writeSecretFile(path, data):
    """
    Atomically replace C{path} with C{data}: a temp file in the same directory
    created 0600, fsynced, renamed over the target, then the directory fsynced.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dirfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def readSecretFile(path):
    """
    Read C{path}, refusing it if group or others may read or write it.

    @raise KeyFileError: the file is too permissive or unreadable.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key file: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{path}: key file has mode {stat.S_IMODE(mode):04o}, readable or "
                f"writable by group/others; refusing it (chmod 600 {path})"
            )
        return f.read(4096)


def ensurePrivateDirectory(path):
    """Create C{path} (and parents) with mode 0700 if it does not exist."""
    os.makedirs(path, mode=0o700, exist_ok=True)
