"""Model layer: tiny models, name resolution, the crash-safe cache."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import textenv
from infra.storage import cached_dir


@pytest.mark.parametrize(
    ("name", "vocab", "arch"),
    [
        ("tiny-sp", 512, "LlamaForCausalLM"),
        ("tiny-gpt2", 50257, "GPT2LMHeadModel"),
        ("tiny-smollm2", 49152, "LlamaForCausalLM"),
    ],
)
def test_tiny_models(name: str, vocab: int, arch: str) -> None:
    textenv.load_model(name)  # make sure the cache entry exists
    start = time.perf_counter()
    model = textenv.load_model(name)
    assert time.perf_counter() - start < 1.0
    tokenizer = textenv.load_tokenizer(name)
    assert type(model).__name__ == arch and model.config.vocab_size == vocab == len(tokenizer)
    assert model.config.hidden_size == 64
    assert not model.training
    again = textenv.load_model(name)
    for a, b in zip(model.parameters(), again.parameters(), strict=False):
        assert torch.equal(a, b)
    ids = tokenizer("Hello there, my friend", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], vocab)


def test_gpt2_tokenizer_is_real_bpe() -> None:
    tokenizer = textenv.load_tokenizer("tiny-gpt2")
    assert tokenizer("Hello world").input_ids == [15496, 995]


def test_local_directory(tmp_path: Path) -> None:
    model = textenv.load_model("tiny-sp")
    model.save_pretrained(tmp_path)
    textenv.load_tokenizer("tiny-sp").save_pretrained(tmp_path)
    assert textenv.load_model(tmp_path).config.vocab_size == 512
    assert len(textenv.load_tokenizer(str(tmp_path))) == 512


def test_cache_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def failing_build(out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("conversion crashed")

    with pytest.raises(RuntimeError, match="conversion crashed"):
        cached_dir("models/broken", failing_build, root=tmp_path)
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    calls = []
    path = cached_dir("models/broken", lambda out: calls.append((out / "ok").write_text("1")), root=tmp_path)
    assert (path / "ok").read_text() == "1" and len(calls) == 1


def test_cache_lost_rename_race(tmp_path: Path) -> None:
    final = tmp_path / "entry"

    def racing_build(out: Path) -> None:  # another process finishes first while we build
        (out / "mine").write_text("x")
        final.mkdir()
        (final / "theirs").write_text("y")

    assert cached_dir("entry", racing_build, root=tmp_path) == final
    assert [p.name for p in final.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cache_root_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.storage import cache_root

    monkeypatch.setenv("TEXTENV_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("TEXTENV_CACHE")
    assert cache_root() == Path.home() / ".cache" / "textenv"


def test_hub_id_offline_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from textenv import models

    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(OSError, match="local directory"):
        textenv.load_model("someone/not-a-cached-model")


@pytest.mark.parametrize("load", [textenv.load_model, textenv.load_tokenizer])
def test_uncached_hub_id_fails_fast_offline(load, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    lookups: list[object] = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: lookups.append(args) or [])
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # unset: textenv stays offline
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"textenv works offline: use a packaged model \(smollm2-135m-instruct"):
        load("someone/not-a-cached-model")
    assert time.perf_counter() - start < 2.0
    assert lookups == []  # no network at all, so no retries either
    with pytest.raises(OSError, match=r"does not download models unless HF_HUB_OFFLINE=0.*local directory"):
        load("someone/not-a-cached-model")


def test_hub_is_asked_only_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    from textenv import models

    asked: list[float] = []
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=2.0: asked.append(timeout) or False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="does not download models unless HF_HUB_OFFLINE=0"):
        textenv.load_tokenizer("someone/not-a-cached-model")
    assert asked == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # opted in: the hub is tried, and found unreachable here
    with pytest.raises(OSError, match="the hub is not reachable.*local directory"):
        textenv.load_tokenizer("someone/not-a-cached-model")
    assert len(asked) == 1


def test_first_build_prints_one_line_and_no_library_chatter(tmp_path: Path) -> None:
    """A fresh cache (a new user's first run) builds the model with one line of ours, not the libraries'
    progress bars or DeepSpeed's accelerator warning (transformers' save_pretrained imports DeepSpeed)."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "DS_ACCELERATOR"}
    env.update(TEXTENV_CACHE=str(tmp_path), PYTHONWARNINGS="default")
    code = "from textenv.models import model_dir; print(model_dir('tiny-gpt2'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip(), "config.json").is_file()
    assert done.stderr.count("textenv: building model 'tiny-gpt2' once") == 1, done.stderr
    for noise in ("Warning", "WARNING", "Loading weights", "Writing model shards", "it/s]"):
        assert noise not in done.stderr, f"{noise!r} in the output:\n{done.stderr}"


def test_loading_a_model_draws_no_progress_bar(capfd: pytest.CaptureFixture[str]) -> None:
    """transformers draws a "Loading weights" bar at every load: each benchmark run, evaluation copy and
    worker would print one. load_model turns it off for the load and leaves the user's setting as it was."""
    from transformers.utils import logging as hf_logging

    textenv.load_model("tiny-gpt2")  # built (or found) in the cache first, so the next load is a plain load
    capfd.readouterr()
    hf_logging.enable_progress_bar()
    textenv.load_model("tiny-gpt2")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()


def test_a_failed_build_shows_what_the_libraries_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The build's own stderr is hidden only when it succeeds: a failure shows it, raises, and leaves no
    cache entry behind."""
    import sys

    from textenv import models

    def broken(out: Path) -> None:
        print("converter: tensor 7 is corrupt", file=sys.stderr)
        raise OSError("cannot read the GGUF file")

    monkeypatch.setenv("TEXTENV_CACHE", str(tmp_path))
    monkeypatch.setitem(models._BUILDERS, "tiny-sp", broken)
    with pytest.raises(OSError, match="cannot read the GGUF file"):
        models.model_dir("tiny-sp")
    assert "converter: tensor 7 is corrupt" in capsys.readouterr().err
    assert not any(p.is_dir() and p.name == "tiny-sp" for p in tmp_path.rglob("*"))
