"""`load_model("ORG/NAME")` from a fake Hugging Face cache laid out as huggingface_hub writes it
(https://huggingface.co/docs/hub/local-cache): models--ORG--NAME/blobs/<sha256> holds the files,
snapshots/<commit>/<file> are relative symlinks into blobs, refs/main holds the current commit."""
import hashlib
import os

import pytest
import torch

from checkpoint import ModelLoadError, hf_cache_dir, load_model
from tests.test_checkpoint import gguf_metadata, gguf_tensors_of, logits_of, write_gguf, write_hf_folder
from tests.tiny_model import tiny_model


@pytest.fixture(autouse=True)
def no_hf_env(monkeypatch):
    for var in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)


def cache_snapshot(cache, repo_id, commit, files, current=True):
    """Put the files of a folder into the cache as one snapshot; refs/main names it when current."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in sorted(files.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.join("..", "..", "blobs", blob.name))
    if current:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)  # huggingface_hub writes the hash without a newline
    return snap


def test_cache_dir_follows_the_documented_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hf_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "direct"))  # takes priority over HF_HOME
    assert hf_cache_dir() == tmp_path / "direct"


def test_loads_the_snapshot_refs_main_names_else_the_newest(monkeypatch, tmp_path):
    old, new = tiny_model(seed=1), tiny_model(seed=2)
    write_hf_folder(tmp_path / "old", old)
    write_hf_folder(tmp_path / "new", new)
    cache = tmp_path / "hf" / "hub"
    old_snap = cache_snapshot(cache, "org/tiny", "a" * 40, tmp_path / "old", current=False)
    cache_snapshot(cache, "org/tiny", "b" * 40, tmp_path / "new")
    os.utime(old_snap, (2e9, 2e9))  # the stale snapshot is the most recently touched: refs/main must still win
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    loaded, tok = load_model("org/tiny")
    assert torch.equal(logits_of(loaded), logits_of(new))
    assert tok.encode("ab<|im_end|>") == [256, 258]
    # without refs/main (or with one naming a snapshot that is gone), the newest snapshot
    (cache / "models--org--tiny" / "refs" / "main").write_text("c" * 40)
    assert torch.equal(logits_of(load_model("org/tiny")[0]), logits_of(old))
    (cache / "models--org--tiny" / "refs" / "main").unlink()
    assert torch.equal(logits_of(load_model("org/tiny")[0]), logits_of(old))


def test_gguf_repository_snapshot(monkeypatch, tmp_path):
    model = tiny_model(seed=3)
    (tmp_path / "files").mkdir()
    write_gguf(tmp_path / "files" / "tiny-F32.gguf", gguf_metadata(model.cfg), gguf_tensors_of(model))
    (tmp_path / "files" / "README.md").write_text("a GGUF repository holds no config.json")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    cache_snapshot(tmp_path / "cache", "org/tiny-GGUF", "d" * 40, tmp_path / "files")
    assert torch.equal(logits_of(load_model("org/tiny-GGUF")[0]), logits_of(model))
    # two quantisations in one snapshot: the user must choose
    (tmp_path / "files" / "tiny-F16.gguf").write_bytes((tmp_path / "files" / "tiny-F32.gguf").read_bytes())
    cache_snapshot(tmp_path / "cache", "org/two-GGUF", "e" * 40, tmp_path / "files")
    with pytest.raises(ModelLoadError, match=r"holds 2 .gguf files; pass one of them, e.g. .*tiny-F16.gguf"):
        load_model("org/two-GGUF")


def test_missing_model_says_where_it_looked_and_how_to_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError) as err:
        load_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "cache" / "models--HuggingFaceTB--SmolLM2-360M-Instruct") in message
    assert "`hf download HuggingFaceTB/SmolLM2-360M-Instruct`" in message
    # a path-looking spec that does not exist is not looked up in the cache
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./org/tiny")
    # a local folder of that name wins over the cache
    monkeypatch.chdir(tmp_path)
    model = tiny_model(seed=5)
    (tmp_path / "org").mkdir()
    write_hf_folder(tmp_path / "org" / "tiny", model)
    assert torch.equal(logits_of(load_model("org/tiny")[0]), logits_of(model))
