"""Secret files on disk: written atomically with mode 0600, refused when too open.

Key material and state must never be half-written (a crash mid-write would
leave a node without its identity or its guards) and never readable by
anyone but its owner.  Each write goes through a temp file with a random
name, so a temp file a crash left behind never blocks a later write (a pid
in the name would: containers restart as pid 1 every time).
"""

import os
import secrets
import stat
import time

from meshvpn.errors import KeyFileError

# A temp file this old was left by a crash: no write takes this long, and
# one process at a time owns a data dir, so removing it races with nobody.
STALE_TEMP_S = 60.0
_TEMP_TRIES = 8


def _tempPrefix(path):
    return f".{os.path.basename(path)}."


def writeSecretFile(path, data):
    """
    Atomically replace C{path} with C{data}: a fresh temp file in the same
    directory created 0600, fsynced, renamed over the target, then the
    directory fsynced.  Temp files of C{path} that a crash left behind are
    removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    _removeStaleTemps(directory, _tempPrefix(path))
    for _ in range(_TEMP_TRIES):
        tmp = os.path.join(directory, f"{_tempPrefix(path)}{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            break
        except FileExistsError:
            continue  # 64 random bits collided; a new name will not
    else:
        raise KeyFileError(f"{path}: could not create a temp file beside it")
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


def _removeStaleTemps(directory, prefix):
    now = time.time()
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return  # the write itself will report what is wrong with the directory
    for name in names:
        leftover = os.path.join(directory, name)
        try:
            if now - os.lstat(leftover).st_mtime > STALE_TEMP_S:
                os.unlink(leftover)
        except OSError:
            pass  # already gone, or not ours to remove: harmless, its name is never reused


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
    """
    Create C{path} (and parents) with mode 0700, or tighten an existing
    C{path} that group or others may enter, read or write.

    @return: the mode C{path} had if it was tightened, else C{None}.
    @raise KeyFileError: C{path} is too open and cannot be tightened.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    try:
        os.chmod(path, 0o700)
    except OSError as e:
        raise KeyFileError(
            f"{path}: data directory has mode {mode:04o} and cannot be made 0700: {e.strerror}"
        ) from None
    return mode
