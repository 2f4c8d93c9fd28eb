"""Supervised fine-tuning (agents.sft): loss masks, bad lines, learning, export, exact resume, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import textenv
from agents import sft
from agents.sft import SFTConfig, SFTTrainer
from agents.sft_data import encode_record, load_examples

CHAT = {
    "messages": [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "bye"},
    ]
}


def trained_text(tokenizer: Any, record: dict[str, Any]) -> str:
    example = encode_record(record, tokenizer, "test")
    assert len(example.input_ids) == len(example.loss_mask)
    return tokenizer.decode([t for t, m in zip(example.input_ids, example.loss_mask, strict=True) if m])


def test_loss_mask_covers_completion_and_assistant_turns_only() -> None:
    smol = textenv.load_tokenizer("tiny-smollm2")  # SmolLM2's tokenizer: has a chat template
    assert trained_text(smol, CHAT) == "hello<|im_end|>\nbye<|im_end|>\n"
    assert trained_text(smol, {"prompt": "to be", "completion": " or not"}) == " or not<|im_end|>"
    plain = textenv.load_tokenizer("tiny-gpt2")  # no chat template: the documented fallback format
    assert not plain.chat_template
    assert trained_text(plain, CHAT) == " hello<|endoftext|>\n bye<|endoftext|>\n"
    full = encode_record(CHAT, plain, "test")
    assert plain.decode(full.input_ids).startswith("user: hi there\nassistant: hello<|endoftext|>\nuser:")


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"prompt": "p"}, 'non-empty string "completion"'),
        ({"messages": [{"role": "robot", "content": "x"}]}, r"messages\[0\]"),
        ({"messages": [{"role": "user", "content": "x"}]}, 'no "assistant" message'),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, line: Any, message: str) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "completion": " b"}, line])
    with pytest.raises(ValueError, match=message) as error:
        load_examples(data, textenv.load_tokenizer("tiny-sp"), max_length=32)
    assert f"{data}:2" in str(error.value)


def review_records(count: int, offset: int = 0) -> list[dict[str, str]]:
    from infra.corpora import drug_review_rows

    rows = [r["review"].split() for r in drug_review_rows("train") if r["label"] == "positive"]
    halves = [(len(words) // 2, words) for words in rows[offset : offset + count]]
    return [{"prompt": " ".join(w[:h]), "completion": " " + " ".join(w[h:])} for h, w in halves]


FAST: dict[str, Any] = {
    "batch_size": 8,
    "learning_rate": 3e-3,
    "max_length": 64,
    "precision": "fp32",
    "progress_bar": False,
}


def test_sft_lowers_heldout_loss_exports_and_logs(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", review_records(64))
    held_out = write_jsonl(tmp_path / "eval.jsonl", review_records(16, offset=100))
    paths = ["--data", str(data), "--eval-data", str(held_out), "--output", str(tmp_path / "run")]
    settings = (
        "--model tiny-sp --epochs 3 --batch-size 8 --learning-rate 3e-3 --max-length 64 --precision fp32"
    )
    metrics = sft.main([*paths, *settings.split(), "--no-progress-bar"])
    assert metrics["steps"] == 24
    assert metrics["eval_perplexity"] < 0.6 * metrics["eval_perplexity_before"]
    assert [h["step"] for h in metrics["history"]] == [0, 8, 16, 24]  # before, then each epoch
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["eval_loss"] == metrics["eval_loss"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    exported = textenv.load_model(str(run / "model"))
    tokenizer = textenv.load_tokenizer(str(run / "model"))
    example = load_examples(held_out, tokenizer, 64)[0]
    ids = torch.tensor([example.input_ids])
    assert exported(input_ids=ids).logits.shape[-1] == len(tokenizer)
    with pytest.raises(FileExistsError, match="--resume"):
        SFTTrainer("tiny-sp", data, run, SFTConfig(**FAST)).train()


def test_resume_continues_exactly(tmp_path: Path) -> None:
    records = review_records(40)
    straight = SFTTrainer("tiny-sp", records, tmp_path / "a", SFTConfig(epochs=2, **FAST))
    straight.train()
    first = SFTTrainer("tiny-sp", records, tmp_path / "b", SFTConfig(epochs=2, save_every=3, **FAST))
    save = first.save_checkpoint

    def crash_after_third_save() -> None:
        save()
        if first.step == 3:
            raise KeyboardInterrupt  # the process dies after the checkpoint of step 3

    first.save_checkpoint = crash_after_third_save  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        first.train()
    resumed = SFTTrainer("tiny-sp", records, tmp_path / "b", SFTConfig(epochs=2, **FAST))
    metrics = resumed.train(resume=True)
    assert metrics["steps"] == straight.step == 10
    for a, b in zip(straight.lm.parameters(), resumed.lm.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    other = SFTTrainer("tiny-sp", records[:30], tmp_path / "b", SFTConfig(epochs=2, **FAST))
    with pytest.raises(ValueError, match="other data or settings"):
        other.train(resume=True)


def test_bf16_run_exports_the_fp32_master_weights(tmp_path: Path) -> None:
    settings = {**FAST, "precision": "bf16", "max_steps": 4}
    trainer = SFTTrainer("tiny-sp", review_records(24), tmp_path / "run", SFTConfig(**settings))
    trainer.train()
    exported = list(textenv.load_model(str(tmp_path / "run" / "model")).parameters())
    masters = [p for group in trainer.engine.optimizer.fp32_groups for p in group]
    assert all(p.dtype == torch.float32 for p in exported)
    for got, master in zip(exported, masters, strict=True):
        torch.testing.assert_close(got, master.view_as(got), rtol=0, atol=0)
    working = [p.float() for p in trainer.lm.parameters()]  # bf16: the masters rounded
    assert any(not torch.equal(a, b) for a, b in zip(exported, working, strict=True))
