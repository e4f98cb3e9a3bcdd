"""Offline distillation: the frozen teacher's tapped outputs, computed once and read back.

A frozen teacher on a deterministic input pipeline produces the same outputs every epoch, so
``trainer.teacher_cache: true`` runs each teacher once over the training split and stores every
tapped output as a memory-mapped ``.npy`` file. Later epochs, and later runs, read the rows of a
batch by sample index instead of running the teacher.

The cache is keyed by the teacher's weights, the exact training inputs (a hash of the tensor)
and the tap, so a stale cache is never used. It lives next to the teacher checkpoint, in
``teacher-outputs/`` (or under ``$KDCORE_CACHE_DIR`` when that folder is not writable), and is
written to a temporary folder first and renamed, so a killed run never leaves half a cache.

Each file is written through plain writes (a full disk is an ``ENOSPC`` error naming the
folder; filling a memory map on a full file system would be a SIGBUS), and its CRC-32 is
recorded in ``checksums.json`` as it is written. Opening the cache reads every file once and
compares (zlib's CRC-32: 1.1-1.2 GB/s in memory on one core of the development machine): a
flipped bit, zeroed rows, a truncated file or a damaged header are named, with the remedy
(delete the folder: the next run fills it again).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import shutil
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from kdcore.components import Distiller
from kdcore.data import TensorSplit
from kdcore.engine import distributed
from kdcore.engine.checkpoint import DISK_FULL, exclusive
from kdcore.engine.frozen import frozen_pass
from kdcore.engine.loop import bar_disabled
from kdcore.engine.teachers import Teacher
from kdcore.errors import UserError
from kdcore.files import cache_dir, temp_folder
from kdcore.taps import OUTPUT

VERSION = 2  # 2: checksums.json
#: the free space a cache must leave on its disk
DISK_MARGIN = 256 << 20
# HALF_MAPS: for a dense task (segmentation, detection), taps whose per-sample shape has 2 or
# more dimensions (dense logits, feature maps) are stored as float16, half the disk and page
# cache; rows are widened to float32 when read. Classification caches stay float32 (exact).
# float16 keeps 11 significant bits, so a logit of magnitude 16 is off by at most 2**-7: the
# losses that read maps (CWD, pixel KD, FitNets, AT) change by far less than their seed-to-seed
# spread (kdcore-plugin-dense's tests measure it). Vectors (classifier logits) stay float32.
RESIDENT_BYTES = 4 << 30  # caches up to this size live on the accelerator


def inputs_digest(data: TensorSplit) -> str:
    digest = hashlib.sha256()
    inputs = data.inputs.detach().cpu().contiguous()
    digest.update(str((tuple(inputs.shape), str(inputs.dtype))).encode())
    digest.update(inputs.numpy().tobytes())
    return digest.hexdigest()[:16]


TEACHER_CACHE_NEEDS_MEMORY = (
    "trainer.teacher_cache needs a deterministic in-memory training split; this data set goes "
    "through per-sample transforms (which may be random), so its teacher outputs can change every "
    "epoch. Turn trainer.teacher_cache off")


def check_teacher_cache(teachers: list[dict[str, Any]], train: Any, augment: Any) -> None:
    """Refuse the cache where the teachers' outputs change from epoch to epoch, at the start of
    a run (before any teacher is trained). ``teachers``: the config's blocks as plain data; no
    teacher taps (no ``distill`` point), nothing to cache."""
    if augment is not None:
        raise UserError("trainer.teacher_cache: data.augment draws new random crops and flips every "
                        "epoch, so the teacher's outputs change with them and cannot be cached; drop "
                        "one of the two")
    if any(t.get("distill") for t in teachers) and not isinstance(train, TensorSplit):
        raise UserError(TEACHER_CACHE_NEEDS_MEMORY)


def _folder_for(checkpoint: str) -> str:
    """Next to the teacher's checkpoint, or in the user's cache folder where that one cannot be
    made or written."""
    folder = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "teacher-outputs")
    with contextlib.suppress(OSError):
        os.makedirs(folder, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    return os.path.join(cache_dir(), "teacher-outputs")


class TeacherOutputCache:
    """The cached outputs of one teacher's taps over one training split.

    On the CPU the rows are read from the memory-mapped files. On an accelerator, a cache that
    fits (:data:`RESIDENT_BYTES`) is copied to the device once (:meth:`keep_on`), so a step
    gathers its rows there: reading the files would move every batch's indices to the host and
    wait for the device.
    """

    def __init__(self, path: str, keys: list[str]) -> None:
        self.path = path
        self.arrays = {key: np.load(os.path.join(path, f"{i}.npy"), mmap_mode="r")
                       for i, key in enumerate(keys)}
        self.resident: dict[str, torch.Tensor] = {}

    def keep_on(self, device: torch.device, chunk_bytes: int = 64 << 20) -> None:
        """Copy the cache to ``device`` once, in slices (never all of it in host RAM); rows are
        then gathered there."""
        for key, array in self.arrays.items():
            table = torch.empty(array.shape, dtype=torch.float32, device=device)
            rows = max(1, chunk_bytes // max(1, array[:1].nbytes))
            for start in range(0, len(array), rows):  # np.array: a writable copy of the slice
                table[start:start + rows].copy_(torch.from_numpy(np.array(array[start:start + rows])))
            self.resident[key] = table

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.arrays.values())

    def rows(self, indices: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        if self.resident:
            return {key: table.index_select(0, indices.to(table.device, non_blocking=True))
                    for key, table in self.resident.items()}
        idx = indices.detach().cpu().numpy()
        # float16 maps (dense outputs) widen on the device: the losses see float32 either way
        return {key: torch.from_numpy(np.ascontiguousarray(array[idx])).to(device, non_blocking=True).float()
                for key, array in self.arrays.items()}


class _NpyWriter:
    """One ``.npy`` file written front to back (header, then rows in order) with its CRC-32
    kept as it goes: no memory map, so a full disk is an error, not a signal."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: Any = np.float32) -> None:
        self.path, self.crc = path, 0
        self.file = open(path, "wb")
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                     "fortran_order": False, "shape": shape})
        self.write(header.getvalue())

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.crc = zlib.crc32(data, self.crc)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def _fill(distiller: Distiller, name: str, data: TensorSplit, folder: str, keys: list[str],
          batch_size: int, device: torch.device, progress: bool, half: frozenset[str] = frozenset()) -> None:
    """Teacher ``name``'s taps ``keys`` over ``data``, written into a temporary folder that is
    renamed to ``folder`` once complete (``keys.json`` last), so a kill never leaves half a cache."""
    writers: dict[str, _NpyWriter] = {}
    tmp = ""  # until the folder is made
    try:
        tmp = temp_folder(os.path.dirname(folder))  # not mkdtemp's 0700: runs of other users share it
        for start in tqdm(range(0, len(data), batch_size), disable=bar_disabled(progress), leave=False,
                          desc=f"teacher cache {name}"):
            inputs = data.inputs[start:start + batch_size].to(device)
            features = distiller.compute_teacher_features(inputs, [name])[name]
            for i, key in enumerate(keys):
                value = features[key]
                if not torch.is_tensor(value):
                    raise UserError(f"teacher_cache: tap {key!r} of teacher {name!r} is not a tensor "
                                    f"({type(value).__name__}); turn trainer.teacher_cache off")
                if key not in writers:
                    writers[key] = _NpyWriter(os.path.join(tmp, f"{i}.npy"), (len(data), *value.shape[1:]),
                                              np.float16 if key in half else np.float32)
                stored = value.half() if key in half else value.float()
                if key in half and not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(value).all()):
                    raise UserError(f"teacher_cache: tap {key!r} of teacher {name!r} holds values beyond "
                                    f"float16's range (|x| > 65504), which the cache stores dense maps "
                                    f"in; turn trainer.teacher_cache off")
                writers[key].write(np.ascontiguousarray(stored.cpu().numpy()).tobytes())
        sums = {}
        for i, key in enumerate(keys):
            writers[key].close()
            sums[f"{i}.npy"] = {"crc32": writers[key].crc, "bytes": os.path.getsize(writers[key].path)}
        with open(os.path.join(tmp, "checksums.json"), "w") as f:
            json.dump(sums, f)
        with open(os.path.join(tmp, "keys.json"), "w") as f:  # last: its presence means complete
            json.dump(keys, f)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not os.path.isdir(folder):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another run filled the same cache first
    except BaseException as error:
        for writer in writers.values():
            writer.file.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            raise UserError(f"teacher {name}: no space left to write its output cache in "
                            f"{os.path.dirname(folder)} ({error.strerror}); free space there, or "
                            f"turn trainer.teacher_cache off") from None
        raise


def verify_cache(name: str, folder: str) -> None:
    """A filled cache is complete (``keys.json``, which the fill writes last) and every file has
    the CRC-32 and size its fill recorded; a damaged or missing file is named, with the remedy."""
    if not os.path.isfile(os.path.join(folder, "keys.json")):
        raise UserError(f"teacher {name}: its output cache {folder} is incomplete (no keys.json; "
                        f"not written by kdcore's fill): delete that folder and run again")
    remedy = f"delete the folder {folder} and run again: it is filled again"
    try:
        with open(os.path.join(folder, "checksums.json"), encoding="utf-8") as f:
            sums = json.load(f)
        if not isinstance(sums, dict):
            raise ValueError("not a mapping")
    except (OSError, ValueError) as exc:
        raise UserError(f"teacher {name}: its output cache {folder} has no readable "
                        f"checksums.json ({type(exc).__name__}); {remedy}") from None
    for file, recorded in sorted(sums.items()):
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            raise UserError(f"teacher {name}: output cache file {path} is missing; {remedy}")
        size = os.path.getsize(path)
        if size != recorded.get("bytes"):
            raise UserError(f"teacher {name}: output cache file {path} is damaged ({size} bytes, "
                            f"{recorded.get('bytes')} when filled); {remedy}")
        crc = 0
        with open(path, "rb") as f:
            while block := f.read(16 << 20):
                crc = zlib.crc32(block, crc)
        if crc != recorded.get("crc32"):
            raise UserError(f"teacher {name}: output cache file {path} is damaged (its CRC-32 "
                            f"differs from the one recorded when it was filled); {remedy}")


def _fill_once(distiller: Distiller, name: str, data: TensorSplit, folder: str, keys: list[str],
               batch_size: int, device: torch.device, progress: bool, log: Callable[[str], None],
               half: frozenset[str]) -> None:
    """Fill ``folder`` unless it exists, then check it. Under a lock file: a second run sharing
    the cache waits for the first one's fill and then finds it filled."""
    if not os.path.isdir(folder):
        with exclusive(folder, log):
            if not os.path.isdir(folder):
                with frozen_pass(distiller.teachers[name]):  # the features go to disk, never to autograd
                    _fill(distiller, name, data, folder, keys, batch_size, device, progress, half)
    verify_cache(name, folder)


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB"):
        if nbytes < 1000:
            return f"{nbytes:.0f} B" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"


def check_room(name: str, folder: str, shapes: dict[str, tuple[int, ...]], half: frozenset[str], n: int,
               log: Callable[[str], None]) -> None:
    """Say what teacher ``name``'s cache of ``n`` samples will hold (``tap N x C x H x W dtype
    (size)``), and refuse, before writing anything, one that the disk cannot hold (with a margin)."""
    total, parts = 0, []
    for key, shape in shapes.items():
        nbytes = n * math.prod(shape) * (2 if key in half else 4)
        total += nbytes
        dims = " x ".join(str(d) for d in (n, *shape))
        parts.append(f"{key} {dims} {'float16' if key in half else 'float32'} ({_human(nbytes)})")
    layout = ", ".join(parts)
    log(f"teacher {name}: caching its outputs on {n} images in {folder}: {layout}, {_human(total)} in all")
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if total + DISK_MARGIN > free:
        raise UserError(f"trainer.teacher_cache: teacher {name}'s outputs need {_human(total)} "
                        f"({layout}) but {parent} has {_human(free)} free; turn "
                        f"trainer.teacher_cache off, cache fewer taps, or set KDCORE_CACHE_DIR "
                        f"to a disk with room")


def attach_teacher_cache(distiller: Distiller, data: Any, teachers: dict[str, Teacher],
                         device: torch.device, *, batch_size: int = 1000, progress: bool = True,
                         log: Callable[[str], None] = print, half_maps: bool = False) -> dict[str, str]:
    """Build (or find) the cache of every teacher and make ``distiller`` read from it.
    ``teachers``: the run's record of each; a cache lives next to the teacher's checkpoint and is
    keyed by its weights as they run (``running_sha256``).

    ``half_maps`` (dense tasks): store maps as float16 (HALF_MAPS, at the top of this module)."""
    if not isinstance(data, TensorSplit):
        raise UserError(TEACHER_CACHE_NEEDS_MEMORY)
    digest = inputs_digest(data)
    paths = {}
    resident_budget = RESIDENT_BYTES  # for all teachers together
    for name, teacher in distiller.teachers.items():
        keys = sorted({p.teacher_tap.key for p in distiller.points if p.teacher == name})
        if not keys:
            continue
        # and the output, as a computed pass has it: algorithms read it (MEAL V2's ensemble)
        keys = sorted({*keys, OUTPUT})
        with frozen_pass(teacher):  # one sample gives each tap's per-sample shape
            features = distiller.compute_teacher_features(data.inputs[:1].to(device), [name])[name]
        shapes = {key: tuple(features[key].shape[1:]) if torch.is_tensor(features[key]) else ()
                  for key in keys}
        half = frozenset(k for k in keys if half_maps and len(shapes[k]) >= 2)  # HALF_MAPS above
        identity = {"v": VERSION, "weights": teachers[name].running_sha256, "inputs": digest, "taps": keys}
        if half:  # named only when used, so the caches of classifiers keep their keys
            identity["float16"] = sorted(half)
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        folder = os.path.join(_folder_for(teachers[name].checkpoint), f"{name}-{key}")
        if os.path.isdir(folder):
            log(f"teacher {name}: reading cached outputs from {folder}")
        else:
            check_room(name, folder, shapes, half, len(data), log)
        # one process per machine fills it; the others wait for the whole fill, then check it
        distributed.local_main_first(
            functools.partial(_fill_once, distiller, name, data, folder, keys, batch_size, device,
                              progress, log, half),
            device, f"teacher {name}: filling its output cache",
            others=functools.partial(verify_cache, name, folder))
        cache = TeacherOutputCache(folder, keys)
        if device.type != "cpu" and cache.nbytes <= resident_budget:
            cache.keep_on(device)
            resident_budget -= cache.nbytes
        distiller.caches[name] = cache
        paths[name] = folder
    return paths
