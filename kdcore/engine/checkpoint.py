"""Checkpoints: written atomically, loaded without running code.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the old one, so a kill at any moment leaves either the old or the new file, never
half of one. Loading uses ``weights_only=True``: a file that would execute code is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import pickle
import re
import socket
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any, BinaryIO

import torch

from ..errors import UserError
from ..files import temp_file

# flock errors that mean "this filesystem cannot lock" rather than a real failure
NO_LOCKING = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
#: errors that mean the disk (or the user's quota) is full
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}

#: the atomic writer's temporary files are ``.kdcore-tmp-<pid>-<12 hex>.pt`` (``.txt``, ``.safetensors``); a
#: resume removes only names of this shape (and 0.1.6's ``.tmp-<pid>-<12 hex>.pt|.tmp``), never
#: a user's own ``notes.tmp``
TEMP_PREFIX = ".kdcore-tmp-"
TEMP_NAME = re.compile(r"\.(?:kdcore-)?tmp-[0-9]+-[0-9a-f]{12}\.(?:pt|txt|tmp|safetensors)\Z")
#: the lock a run holds on its directory for its whole lifetime
RUN_LOCK = ".kdcore-run.lock"


def disk_full(path: str, error: OSError) -> UserError:
    """The one line for a write that found no space: which file, and what to do."""
    return UserError(f"no space left to write {path} ({error.strerror}); free space on that disk "
                     f"(or point the path elsewhere) and run again; a stopped run continues with "
                     f"--resume RUN_DIR")


def _dead_holder(text: str) -> int | None:
    """The pid a lock file names (``kdcore process PID on HOST``) when HOST is this machine and
    that process is gone: the kernel has released its lock, only its name is left."""
    found = re.fullmatch(r"kdcore process (\d+) on (\S+)", text.strip())
    if not found or found.group(2) != socket.gethostname():
        return None
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return int(found.group(1))
    except PermissionError:  # someone else's process: alive
        pass
    return None


@contextlib.contextmanager
def _named(lock: IO[str]) -> Iterator[None]:
    """Write this process into the held ``lock`` file for the block, so a process that finds it
    locked can say whom it waits for; cleared after, so the next reader names nobody gone."""
    lock.seek(0)
    lock.truncate()
    lock.write(f"kdcore process {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # the folder may be gone: nothing to clear then
            lock.truncate(0)
            lock.flush()


@contextlib.contextmanager
def run_lock(run_dir: str, log: Callable[[str], None] = lambda message: None) -> Iterator[None]:
    """Hold ``RUN_DIR/.kdcore-run.lock`` for the block (a run's lifetime): a second process on the
    same run directory (two ``--resume`` at once) stops at once with one line naming the holder,
    instead of both writing checkpoints and duplicate metrics rows. The lock is ``flock``'s, so
    a killed holder's lock is released by the kernel; a file still naming a dead process is taken
    over (and said so). Without ``flock`` (some network mounts) the run goes on unlocked."""
    path = os.path.join(run_dir, RUN_LOCK)
    try:
        lock = open(path, "a+")
    except FileNotFoundError:
        raise UserError(f"run dir {run_dir} does not exist (removed?); nothing to resume there") from None
    except PermissionError:
        raise UserError(f"run dir {run_dir} is not writable; a run needs to write there") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another kdcore process"
            raise UserError(f"run dir {run_dir} is in use by {holder} (lock file {path}); wait for "
                            f"that run to end (or stop it), then resume") from None
        except OSError as error:
            if error.errno not in NO_LOCKING:
                raise
            log(f"no file locking where {run_dir} lives ({error.strerror}); make sure no other "
                f"process runs in it")
        lock.seek(0)
        stale = _dead_holder(lock.read())
        if stale is not None:
            log(f"run dir lock {path} named process {stale}, which is no longer running; taken over")
        with _named(lock):
            yield


@contextlib.contextmanager
def exclusive(path: str, log: Callable[[str], None] = lambda message: None) -> Iterator[None]:
    """Hold an exclusive lock on ``path + ".lock"`` for the block: the first process builds
    ``path`` (a teacher, a cache), the others wait and then find it built. Callers check for
    ``path`` first: a finished build needs no lock (nor write access to its folder).

    A waiting process says whom it waits for (the holder is named in the lock file while it
    holds it), so a run stuck behind a hung one can be told apart from a slow one. Where the
    filesystem has no ``flock`` (some network mounts) the block runs unlocked, with a note: each
    build ends in an atomic rename, so two processes building at once waste work and the last
    one's file stays."""
    lock_path = path + ".lock"
    try:
        lock = open(lock_path, "a+")  # "a+": opening must not erase the holder's name
    except PermissionError:  # a shared cache folder others own: lock read-only, anonymously
        if not os.path.exists(lock_path):
            raise UserError(f"{os.path.dirname(os.path.abspath(path))} is not writable, and "
                            f"{os.path.basename(path)} must be built there; point KDCORE_CACHE_DIR "
                            f"at a folder of yours (or ask its owner to build it)") from None
        lock = open(lock_path)
    with lock:
        locked = True
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            if not holder or _dead_holder(holder) is not None:  # its successor not named yet
                holder = "another process"
            log(f"waiting for {holder} to finish {path} (lock file {lock_path})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in NO_LOCKING:
                raise
            log(f"no file locking where {path} lives ({error.strerror}); going on without it")
            locked = False
        with _named(lock) if locked and lock.writable() else contextlib.nullcontext():
            yield


def _write_atomic(path: str, write: Callable[[BinaryIO], None], suffix: str) -> None:
    """``write`` into a temporary file next to ``path``, fsync it, rename it over ``path`` and
    fsync the folder: a kill at any moment leaves the old file or the new one. A full disk is a
    :class:`UserError` naming ``path``; the old file stays."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = ""  # until it is made
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = temp_file(folder, prefix=TEMP_PREFIX, suffix=suffix)  # umask's mode, not 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            raise disk_full(path, error) from None
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_atomic(obj: Any, path: str) -> None:
    """A checkpoint (``torch.save``), written atomically (temporary ``.kdcore-tmp-*.pt``).
    Serialised in memory first: torch's own file writer reports a full disk as ``unexpected
    pos``, a plain write as ``ENOSPC``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _write_atomic(path, lambda f: f.write(buffer.getbuffer()), ".pt")


def write_text_atomic(text: str, path: str) -> None:
    """Text files (config.yaml, summary.json) the same way (temporary ``.kdcore-tmp-*.txt``)."""
    _write_atomic(path, lambda f: f.write(text.encode("utf-8")), ".txt")


def write_json_atomic(obj: Any, path: str) -> None:
    write_text_atomic(json.dumps(obj, indent=2) + "\n", path)


def load_checkpoint(path: str, *, what: str = "checkpoint", remedy: str | None = None) -> Any:
    """Load ``path`` with ``weights_only=True``, naming the file in every error; ``remedy`` is
    what every error about the file's contents suggests (default: re-save the weights, which
    fits a file of weights, not a training state)."""
    if not os.path.exists(path):
        raise UserError(f"{what} {path} does not exist")
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a directory, expected a .pt file")
    ending = f"; {remedy}" if remedy else ""
    _check_crc(path, what, ending)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        blocked = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", text)
        if blocked:
            raise UserError(f"{what} {path} contains Python objects that would run code when "
                            f"loaded ({blocked.group(1) or blocked.group(2)}); kdcore refuses it "
                            f"({remedy or 're-save it as a plain state_dict'})") from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        raise UserError(f"{what} {path} is not a checkpoint of tensors that can be loaded safely"
                        f" ({detail.group(1).strip() if detail else _first(exc)}); "
                        f"{remedy or 're-save it with torch.save(model.state_dict(), path)'}") from None
    except Exception as exc:  # damaged bytes can fail anywhere in the unpickler (KeyError, ...)
        raise UserError(f"{what} {path} is corrupted or truncated ({_first(exc)}){ending}") from None


def _first(exc: BaseException) -> str:
    """The first sentence of an error (torch's zip errors run on for a paragraph)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(exc).__name__


def _check_crc(path: str, what: str, ending: str = "") -> None:
    """torch.load does not check the CRC32 each zip member carries: a flipped bit in tensor
    data would load as silently wrong weights. Read every member once and compare."""
    try:
        if not zipfile.is_zipfile(path):
            return  # truncated (no central directory) or legacy format: torch.load reports it
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise UserError(f"{what} {path} is corrupted or truncated ({_first(exc)}){ending}") from None
    if bad is not None:
        raise UserError(f"{what} {path} is corrupted: {bad} fails its CRC check{ending}")


def state_dict_of(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """The model weights inside a loaded checkpoint: a plain state_dict, or under
    ``state_dict`` / ``model`` / ``student``."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "student"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        if all(torch.is_tensor(v) for v in obj.values()):
            return obj
    raise UserError(f"checkpoint {path} holds no state_dict (expected a mapping of tensors)")


def load_weights(model: torch.nn.Module, path: str, *, what: str) -> None:
    """Load weights from ``path`` into ``model`` strictly, naming missing and unexpected keys."""
    obj = load_checkpoint(path, what=what)
    state = state_dict_of(obj, path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and torch.is_tensor(state[k]) and state[k].shape != own[k].shape]
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": wrong}
    parts = [f"{label} {_few(items)}" for label, items in found.items() if items]
    if parts:
        raise UserError(f"{what} {path} does not fit {type(model).__name__}: " + "; ".join(parts)
                        + " (check the model type and its parameters)")
    model.load_state_dict(state)


def _few(items: list[str], n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)})"


def write_safetensors(state_dict: dict[str, torch.Tensor], path: str) -> None:
    """The weights as safetensors (no pickle: readable from any language), when the
    ``safetensors`` package is installed; nothing when it is not."""
    try:
        from safetensors.torch import save
    except ImportError:
        return
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}  # unshared
    data = save(tensors, metadata={"format": "pt", "written_by": "kdcore"})
    _write_atomic(path, lambda f: f.write(data), ".safetensors")
