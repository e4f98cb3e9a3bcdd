"""kdcore as users get it: built wheels installed (not editable) into a fresh virtual environment.

`scripts/build_dists.py` builds the sdist and wheel of the core and of every plugin into one
folder; a new venv, which reuses this environment's torch (and kdcore's other dependencies)
through a ``.pth`` file pointing at a folder of links, then gets exactly what a user types:
``pip install --find-links DIST kdcore-plugin-rkd``, a command plugin (kdcore-plugin-inspect)
the same way, ``kdcore plugins --strict``, ``kdcore list preset`` and the RKD preset by name for
one epoch on a few hundred images. The presets and the kernel source the core reads must be in
the wheels, or these fail. Then a plugin whose kdcore range leaves out this kdcore: pip refuses
it, and installed anyway (``--no-deps``) kdcore skips it with the message docs/plugins.md shows.

pip runs with ``PIP_NO_INDEX=1`` and no config file: it sees DIST and the linked packages only
(nothing is downloaded, and no package of the same name elsewhere can stand in for the built ones).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
INCOMPATIBLE = ROOT / "tests" / "fixtures" / "plugins" / "incompatible"

pytestmark = [pytest.mark.wheels, pytest.mark.fashion]


def dependency_closure(name: str) -> list[metadata.Distribution]:
    """``name``'s installed requirements, recursively, with the extras each asks for (other
    platforms' markers left out), without ``name`` itself."""
    seen: dict[str, metadata.Distribution] = {}
    extras_done: set[tuple[str, str]] = set()
    todo = [(Requirement(r), ("",)) for r in metadata.requires(name) or []]
    while todo:
        req, wanted = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted):
            continue
        key = req.name.lower().replace("_", "-")
        try:
            dist = seen.get(key) or metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional platform package that is not here
        new = {e for e in ("", *req.extras) if (key, e) not in extras_done}
        if not new:
            continue
        seen[key] = dist
        extras_done |= {(key, e) for e in new}
        todo += [(Requirement(r), tuple(new)) for r in dist.requires or []]
    return list(seen.values())


def link_dependencies(target: Path) -> None:
    """Link the top-level files and folders (packages, dist-info) of kdcore's dependencies
    into ``target``: torch is reused, never copied or downloaded."""
    target.mkdir()
    for dist in dependency_closure("kdcore"):
        site = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or []}
        for top in sorted(tops - {"..", "__pycache__"}):
            source, link = site / top, target / top
            if source.exists() and not link.exists():
                link.symlink_to(source)


def run(cmd: list[str], env: dict[str, str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    if ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def checkout_metadata() -> set[Path]:
    return set(ROOT.glob("*.egg-info")) | set(ROOT.glob("plugins/*/*.egg-info"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """DIST built by scripts/build_dists.py, and a fresh venv that sees torch and nothing of kdcore."""
    where = tmp_path_factory.mktemp("wheels")
    dist = where / "dist"
    env = dict(os.environ)
    before = checkout_metadata()
    run([sys.executable, str(ROOT / "scripts" / "build_dists.py"), str(dist)], env, ROOT)
    # stale metadata in the checkout would shadow the installed version (build_dists.build)
    assert checkout_metadata() <= before, f"build_dists left {sorted(checkout_metadata() - before)}"
    run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(where / "other"),
         str(INCOMPATIBLE)], env, ROOT)
    env_dir = where / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(env_dir)],
                   check=True, timeout=300)
    # the venv's own old setuptools would shadow the linked one torch needs (python >= 3.12 has none)
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "setuptools"],
                   check=True, capture_output=True, timeout=300)
    link_dependencies(where / "deps")
    site = next((env_dir / "lib").glob("python*/site-packages"))
    (site / "kdcore_test_deps.pth").write_text(str(where / "deps") + "\n")
    return {"dist": dist, "other": where / "other", "bin": env_dir / "bin", "home": where}


def environment(venv: dict[str, Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "KDCORE_PLUGINS", "VIRTUAL_ENV", "PIP_FIND_LINKS")}
    env.update(PATH=f"{venv['bin']}{os.pathsep}{env.get('PATH', '')}", PIP_NO_INDEX="1",
               PIP_CONFIG_FILE=os.devnull,  # this machine's pip.conf (a local wheelhouse) left out
               PIP_DISABLE_PIP_VERSION_CHECK="1", KDCORE_CACHE_DIR=str(venv["home"] / "cache"))
    return env


TINY = ["data.train_limit=256", "data.test_limit=256", "data.batch_size=64", "trainer.epochs=1",
        "teachers.0.train.epochs=1", "teachers.0.train.train_limit=256", "trainer.progress=false",
        "trainer.threads=1"]


def test_the_readme_quick_start_from_built_wheels(venv: dict[str, Path]) -> None:
    """README's first block, as typed (runs on a few hundred images)."""
    env, cwd = environment(venv), venv["home"]  # not the checkout: nothing of it on sys.path
    pip, kdcore = str(venv["bin"] / "pip"), str(venv["bin"] / "kdcore")
    tiny = [a for s in [*TINY, f"output_dir={cwd / 'runs'}"] for a in ("--set", s)]

    run([pip, "install", "--find-links", str(venv["dist"]), "kdcore"], env, cwd)
    core = run([kdcore, "run", "--algo", "teacher_student", *tiny], env, cwd)  # the core alone
    assert "student top1:" in core.stdout, core.stdout
    bare = run([kdcore, "list", "loss"], env, cwd)
    assert bare.stdout.split()[0] == "kdcore:kd"
    assert "plugins add more: 'kdcore plugins' lists the installed ones" in bare.stderr
    made = run([kdcore, "new-plugin", "zz", "--dir", str(cwd / "scaffold")], env, cwd)  # reads the
    preset = cwd / "scaffold" / "kdcore-plugin-zz" / "kdcore_plugin_zz" / "presets" / "fashion_mnist.yaml"
    assert "created" in made.stdout and "cnn_teacher" in preset.read_text()  # core's preset data
    missing = run([kdcore, "run", "--preset", "rkd", *tiny], env, cwd, ok=False)
    assert missing.returncode == 2 and "pip install kdcore-plugin-rkd" in missing.stderr
    assert "in this checkout" not in missing.stderr, missing.stderr  # an installed wheel: no folder
    no_command = run([kdcore, "inspect", "cnn_student", "--input-shape", "1,28,28"], env, cwd, ok=False)
    assert no_command.returncode == 2 and "pip install kdcore-plugin-inspect" in no_command.stderr

    run([pip, "install", "--find-links", str(venv["dist"]), "kdcore-plugin-rkd"], env, cwd)
    shown = run([str(venv["bin"] / "python"), "-c", "import kdcore, kdcore_plugin_rkd; "
                 "print(kdcore.__file__); print(kdcore_plugin_rkd.__file__)"], env, cwd).stdout
    assert all(str(venv["bin"].parent) in line for line in shown.split()), shown  # not editable
    # a command plugin from its wheel: it needs only kdcore and torch
    run([pip, "install", "--find-links", str(venv["dist"]), "kdcore-plugin-inspect"], env, cwd)
    inspected = run([kdcore, "inspect", "cnn_student", "--input-shape", "1,28,28"], env, cwd)
    first = "cnn_student: 6,274 parameters, input (1, 28, 28)"
    assert first in inspected.stdout.splitlines() and "stage1.conv" in inspected.stdout, inspected.stdout

    plugins = run([kdcore, "plugins", "--strict"], env, cwd)
    assert "rkd  (kdcore-plugin-rkd " in plugins.stdout and "preset: rkd" in plugins.stdout
    assert "inspect  (kdcore-plugin-inspect " in plugins.stdout and "command: inspect" in plugins.stdout
    assert "loss: kd" in plugins.stdout  # the core's own

    presets = run([kdcore, "list", "preset"], env, cwd)
    ids = {line.split()[0] for line in presets.stdout.splitlines()}
    assert {"kdcore:teacher_student", "kdcore:vanilla", "rkd:rkd"} <= ids

    trained = run([kdcore, "run", "--preset", "rkd", *tiny], env, cwd)
    assert "student top1:" in trained.stdout and "run dir:" in trained.stdout, trained.stdout
    run_dir = Path(trained.stdout.strip().splitlines()[-1].removeprefix("run dir: "))
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"task", "rkd"} <= set(last["train"]), last["train"]  # the preset's loss was trained


def test_a_plugin_for_another_kdcore_is_refused_by_pip_and_skipped_by_kdcore(venv: dict[str, Path]) -> None:
    env, cwd = environment(venv), venv["home"]
    pip, kdcore = str(venv["bin"] / "pip"), str(venv["bin"] / "kdcore")
    links = ["--find-links", str(venv["other"]), "--find-links", str(venv["dist"])]
    run([pip, "install", *links, "kdcore"], env, cwd)

    refused = run([pip, "install", *links, "kdcore-fixture-incompatible"], env, cwd, ok=False)
    assert refused.returncode != 0
    assert "Could not find a version that satisfies the requirement kdcore<0.3,>=0.2" in refused.stderr, \
        refused.stderr  # the message docs/plugins.md explains

    run([pip, "install", "--no-deps", *links, "kdcore-fixture-incompatible"], env, cwd)
    shown = run([kdcore, "plugins"], env, cwd).stdout
    version = run([kdcore, "--version"], env, cwd).stdout.split()[-1]
    declared = "<0.3,>=0.2"  # ">=0.2,<0.3" as a built wheel's metadata writes it
    assert ("fix_future  (kdcore-fixture-incompatible 9.0.0)  incompatible  requires kdcore "
            f"{declared}") in shown, shown
    assert f"error: needs kdcore {declared}, this is kdcore {version}; upgrade one of them" in shown
    assert run([kdcore, "plugins", "--strict"], env, cwd, ok=False).returncode == 1
    assert "kdcore:teacher_student" in run([kdcore, "list", "preset"], env, cwd).stdout  # the rest works
