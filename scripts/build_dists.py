"""Build the sdist and wheel of kdcore and of every plugin under plugins/ into one folder.

    python scripts/build_dists.py [DIST] [--jobs N]   # default: dist/, one build per CPU

Each wheel is built from its sdist (``python -m build``), so a file missing from the sdist
fails here, not on a user's machine. ``--no-isolation`` uses this environment's setuptools
(no download); install ``build`` first (``pip install build``, in kdcore's ``test`` extra).
Then, in any environment: ``pip install --find-links DIST kdcore-plugin-rkd``.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def projects(root: str = ROOT) -> list[str]:
    """The core's folder, then every plugin folder with a pyproject.toml, sorted."""
    plugins = sorted(p for p in glob.glob(os.path.join(root, "plugins", "*"))
                     if os.path.isfile(os.path.join(p, "pyproject.toml")))
    return [root, *plugins]


def egg_infos(project: str) -> set[str]:
    return set(glob.glob(os.path.join(project, "*.egg-info")))


def build(project: str, dist: str) -> str:
    """sdist, then the wheel from the sdist, of ``project`` into ``dist``; the error, if any.

    The sdist step writes ``<name>.egg-info`` into the checkout. Left there, it is metadata of
    this version on ``sys.path`` (the working directory): after a version bump,
    ``importlib.metadata`` would find it before the installed one and every plugin's kdcore
    range check would read the old version. So what the build made, it removes."""
    before = egg_infos(project)
    try:
        proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, project],
                              capture_output=True, text=True)
    finally:
        for made in egg_infos(project) - before:
            shutil.rmtree(made, ignore_errors=True)
    if proc.returncode != 0:
        return f"build_dists: {project} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dist", nargs="?", default=os.path.join(ROOT, "dist"), help="output folder")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="builds at a time")
    args = parser.parse_args(argv)
    os.makedirs(args.dist, exist_ok=True)
    start = time.monotonic()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each build is its own process
        errors = [e for e in pool.map(lambda p: build(p, args.dist), projects()) if e]
    if errors:
        sys.exit("\n".join(errors))
    made = sorted(os.listdir(args.dist))
    print(f"build_dists: {len(made)} files in {args.dist} ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
