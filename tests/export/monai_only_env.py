"""A virtual environment with MONAI, PyTorch and nibabel (and what they need) but not sarcomakit, made offline.

``python -m venv --without-pip`` makes an empty environment in a second; the distributions' top-level packages
are then symlinked from the interpreter running the tests into its ``site-packages``. Only the dependency
closure of the named distributions is linked (their non-optional requirements, markers evaluated), so the
environment is what ``pip install monai nibabel`` would give, without a download.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOTS = ("monai", "torch")
"""What every MONAI bundle needs; a bundle's ``required_packages_version`` (e.g. nibabel, the NIfTI reader) adds
to it, and ``fire`` (MONAI's command line, ``python -m monai.bundle``) is always added."""


def dependency_closure(roots: tuple[str, ...] = ROOTS) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``roots`` need, transitively (optional extras left out)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = importlib.metadata.distribution(name)
        seen[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(seen.values())


def top_level_paths(dist: importlib.metadata.Distribution) -> set[Path]:
    """The files and folders a distribution installs at the top of ``site-packages`` (with its metadata)."""
    base = Path(str(dist.locate_file("")))
    names = set()
    for file in dist.files or []:
        parts = Path(file).parts
        if parts and parts[0] not in ("..", "__pycache__") and not parts[0].endswith(".pth"):
            names.add(parts[0])
    return {base / name for name in names if (base / name).exists()}


def make_monai_only_env(folder: Path, required: tuple[str, ...] = ()) -> Path:
    """Create the environment in ``folder`` with MONAI, PyTorch and the ``required`` distributions (and their
    dependencies); returns its ``python``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    wanted = (*ROOTS, *required, "fire")
    for dist in dependency_closure(wanted):
        for path in top_level_paths(dist):
            link = site / path.name
            if not link.exists():
                link.symlink_to(path)
    return python


def clean_environ() -> dict[str, str]:
    """The test's environment without what would make sarcomakit importable (PYTHONPATH, a venv's markers)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def run_bundle(python: Path, bundle: Path, dataset_dir: Path, output_dir: Path) -> subprocess.CompletedProcess:
    """Run the bundle's inference in the environment of ``python``, from the bundle folder.

    with MONAI's own command line, ``python -m monai.bundle run`` (``fire``, its CLI's dependency, is a dev
    dependency and linked into the environment).
    """
    args = {"config_file": "configs/inference.json", "dataset_dir": str(dataset_dir), "output_dir": str(output_dir)}
    command = [str(python), "-m", "monai.bundle", "run", *[f"--{k}={v}" for k, v in args.items()]]
    return subprocess.run(command, cwd=bundle, env=clean_environ(), capture_output=True, text=True, timeout=300)
