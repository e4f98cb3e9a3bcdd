"""kdcore's C kernels build once per machine into the cache, and anything in the way (no
compiler, a failing one, an unusable cache, the switch) leaves kdcore on its PyTorch code."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from kdcore_plugin_cpu_speed import native_kernels

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc)")


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty kernel cache, and no library loaded yet in this process."""
    monkeypatch.setenv("KDCORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv(native_kernels.ENV_SWITCH, raising=False)
    native_kernels.load.cache_clear()
    yield tmp_path
    native_kernels.load.cache_clear()


def built(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".so")) if os.path.isdir(folder) else []


def test_built_once_then_reused(fresh, monkeypatch) -> None:
    lib = native_kernels.load("max_pool_2x2")
    assert lib is not None and hasattr(lib, "kdcore_max_pool_2x2_forward")
    files = built(fresh / "cache" / "kernels")
    assert len(files) == 1 and files[0].startswith("max_pool_2x2-")
    assert not [n for n in os.listdir(fresh / "cache" / "kernels") if n.startswith(".tmp-")]

    real_run = subprocess.run

    def no_compiling(command, *args, **kwargs):
        assert "--version" in command, f"compiled again: {command}"
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", no_compiling)
    native_kernels.load.cache_clear()
    assert native_kernels.load("max_pool_2x2") is not None
    assert built(fresh / "cache" / "kernels") == files


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_the_switch_turns_them_off(fresh, monkeypatch, value) -> None:
    monkeypatch.setenv(native_kernels.ENV_SWITCH, value)
    assert native_kernels.load("max_pool_2x2") is None
    assert built(fresh / "cache" / "kernels") == []


def test_no_compiler_means_no_kernel(fresh, monkeypatch) -> None:
    monkeypatch.setenv("CC", str(fresh / "no-such-cc"))
    assert native_kernels.load("max_pool_2x2") is None


def test_a_failing_compiler_leaves_nothing_behind(fresh, monkeypatch) -> None:
    cc = fresh / "broken-cc"
    cc.write_text("#!/bin/sh\necho broken >&2\nexit 1\n")
    cc.chmod(cc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CC", str(cc))
    assert native_kernels.load("max_pool_2x2") is None
    folder = fresh / "cache" / "kernels"
    assert not os.path.isdir(folder) or os.listdir(folder) == []


def test_an_unusable_cache_builds_in_the_temp_folder(fresh, monkeypatch) -> None:
    blocked = fresh / "a-file"
    blocked.write_text("")  # KDCORE_CACHE_DIR is a file: no kernels/ folder can be made in it
    monkeypatch.setenv("KDCORE_CACHE_DIR", str(blocked))
    assert native_kernels.load("max_pool_2x2") is not None
    assert len(built(fresh / "tmp" / f"kdcore-kernels-{os.getuid()}")) == 1


def test_the_build_is_keyed_by_compiler_and_cpu(fresh, monkeypatch) -> None:
    assert native_kernels.load("max_pool_2x2") is not None
    monkeypatch.setattr(native_kernels, "_cpu_identity", lambda: "another CPU")
    native_kernels.load.cache_clear()
    assert native_kernels.load("max_pool_2x2") is not None
    assert len(built(fresh / "cache" / "kernels")) == 2
    monkeypatch.setenv("CC", "env cc")  # another compiler command line
    native_kernels.load.cache_clear()
    assert native_kernels.load("max_pool_2x2") is not None
    assert len(built(fresh / "cache" / "kernels")) == 3


def test_code_from_a_folder_others_can_write_is_never_loaded(fresh, monkeypatch) -> None:
    """Loading a library runs it: a kernels folder (or file) that another user could have
    written to is refused, the temp folder too, and kdcore stays on its tensor ops."""
    blocked = fresh / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("KDCORE_CACHE_DIR", str(blocked))  # no cache: the temp folder is next
    planted = fresh / "tmp" / f"kdcore-kernels-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)  # as someone else's /tmp folder would be to an attacker
    assert native_kernels.load("max_pool_2x2") is None
    assert built(planted) == []


def test_a_group_writable_umask_still_builds_a_private_kernel(fresh) -> None:
    old = os.umask(0o002)
    try:
        assert native_kernels.load("max_pool_2x2") is not None
    finally:
        os.umask(old)
    folder = fresh / "cache" / "kernels"
    assert stat.S_IMODE(os.stat(folder).st_mode) & 0o022 == 0
    assert all(stat.S_IMODE(os.stat(folder / n).st_mode) & 0o022 == 0 for n in built(folder))
