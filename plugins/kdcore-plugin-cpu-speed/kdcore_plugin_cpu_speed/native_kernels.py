"""kdcore's few C kernels, built once per machine with the system's C compiler and loaded
with ctypes; wherever that fails, callers keep their PyTorch code.

Why C: a handful of small-image CPU ops (2x2 max pooling, :mod:`.fast_max_pool`) are slow in
torch's CPU kernels and cost several tensor ops in Python. Why not a torch extension: those
build for a minute against torch's headers and need a compiler at install time; these kernels
use plain C (GCC/Clang vector extensions), build in under a second at first use, and keep the
package pure Python.

A kernel is built into ``$KDCORE_CACHE_DIR/kernels/`` (default ``~/.cache/kdcore/kernels/``),
keyed by the source, the compiler and its flags and this CPU's instruction set (``-march=native``),
so a shared home directory over several machine types keeps one build per type. The build
writes a temporary file and renames it into place: concurrent processes (torchrun) are safe.
``CC`` picks the compiler (default ``cc``; a command line such as ``ccache gcc`` works);
``KDCORE_NATIVE_KERNELS=0`` turns the kernels off. Without a compiler kdcore runs as before,
only slower there; an unwritable cache is replaced by this user's folder in the temp dir.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
from importlib import resources

from kdcore.files import cache_dir, temp_file

ENV_SWITCH = "KDCORE_NATIVE_KERNELS"
# tried in order: the first that builds is kept (a compiler may lack OpenMP or -march=native)
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3", "-march=native"),
    ("-O3",),
)
COMMON_FLAGS = ("-shared", "-fPIC", "-std=gnu11", "-w")


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


@functools.cache
def _cpu_identity() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags (Linux), else the machine."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        return "".join(dict.fromkeys(lines))  # one copy per distinct line, not one per core
    except OSError:
        return platform.machine() + platform.processor()


@functools.cache
def _compiler_identity(cc: tuple[str, ...]) -> str:
    try:
        done = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _check_private(path: str) -> None:
    """Refuse (``PermissionError``) a kernel folder or file that someone else could have put
    there: loading a library runs its code, so it must belong to this user and be writable by
    no one else. (A shared ``KDCORE_CACHE_DIR`` is shared for teachers, whose files are data;
    its ``kernels/`` is then refused and the private temp folder used.)"""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise PermissionError(f"{path}: not this user's alone; kdcore does not load code from it")


def _build(source: bytes, name: str, flags: tuple[str, ...], cc: tuple[str, ...],
           folder: str) -> str | None:
    """Compile ``source`` into ``folder/name-<key>.so`` unless it is there; its path or None."""
    key = hashlib.sha256(b"\0".join([source, " ".join(cc).encode(), " ".join(flags).encode(),
                                     _compiler_identity(cc).encode(), _cpu_identity().encode()]))
    target = os.path.join(folder, f"{name}-{key.hexdigest()[:16]}.so")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    _check_private(folder)
    if os.path.exists(target):
        return target
    fd, tmp = temp_file(folder, suffix=".so")
    os.close(fd)
    try:  # the source goes in on stdin (-x c -): no file to write, wherever kdcore is installed
        done = subprocess.run([*cc, *flags, *COMMON_FLAGS, "-o", tmp, "-x", "c", "-"],
                              input=source, capture_output=True, timeout=120)
        if done.returncode != 0:
            return None
        os.chmod(tmp, 0o755)  # whatever the umask: _check_private refuses group-writable code
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The built kernel library ``kernels/<name>.c``, or None where it cannot be had here."""
    if not enabled():
        return None
    cc = tuple(shlex.split(os.environ.get("CC") or "cc"))  # "ccache gcc" is a compiler too
    if not cc or shutil.which(cc[0]) is None:
        return None
    source = (resources.files("kdcore_plugin_cpu_speed") / "kernels" / f"{name}.c").read_bytes()
    folders = [os.path.join(cache_dir(), "kernels"),
               os.path.join(tempfile.gettempdir(), f"kdcore-kernels-{os.getuid()}")]
    flag_sets = FLAG_SETS
    if "clang" in _compiler_identity(cc).lower():
        # Clang's -fopenmp links LLVM's libomp: a second thread pool beside torch's libgomp
        flag_sets = tuple(f for f in FLAG_SETS if "-fopenmp" not in f)
    refused: set[tuple[str, ...]] = set()  # flags the compiler rejects, wherever it builds
    for folder in folders:  # an unusable cache folder: this user's private temp folder
        for flags in flag_sets:
            if flags in refused:
                continue
            try:
                path = _build(source, name, flags, cc, folder)
            except (OSError, subprocess.SubprocessError):
                break  # this folder cannot be used: the next one
            if path is None:
                refused.add(flags)
                continue
            try:
                _check_private(path)
                return ctypes.CDLL(path)
            except OSError:  # not ours, or not loadable here (a noexec mount, no libgomp)
                continue
    return None
