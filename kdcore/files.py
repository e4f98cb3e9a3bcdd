"""Where kdcore keeps files, and temporary files and folders for atomic writes.

``cache_dir()``: cached teachers, teacher outputs and built kernels (``$KDCORE_CACHE_DIR``,
default ``~/.cache/kdcore``).

Temporary files and folders are created with the usual permissions:

``tempfile.mkstemp``/``mkdtemp`` create files as 0600 and folders as 0700 whatever the umask.
Renamed into place they would keep those modes: a cached teacher, a teacher-output cache or a
student checkpoint that colleagues on the same machine cannot read. These create them as a
plain ``open()`` or ``mkdir`` would: the kernel applies the umask (and any default ACL), so
nothing reads or changes the process's umask.
"""

from __future__ import annotations

import contextlib
import os
import secrets


def cache_dir() -> str:
    return os.environ.get("KDCORE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kdcore")


def _name(folder: str, prefix: str, suffix: str) -> str:
    return os.path.join(folder, f"{prefix}{os.getpid()}-{secrets.token_hex(6)}{suffix}")


def temp_file(folder: str, prefix: str = ".tmp-", suffix: str = "") -> tuple[int, str]:
    """A new, empty file in ``folder`` opened for writing: ``(fd, path)``."""
    while True:
        path = _name(folder, prefix, suffix)
        with contextlib.suppress(FileExistsError):  # the name was taken: draw another
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path


def temp_folder(folder: str, prefix: str = ".tmp-") -> str:
    """A new, empty folder in ``folder``."""
    while True:
        path = _name(folder, prefix, "")
        with contextlib.suppress(FileExistsError):  # the name was taken: draw another
            os.mkdir(path, 0o777)
            return path
