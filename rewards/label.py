"""A local web page for collecting human preferences, the data of DeepSpeed-Chat's step 2.

    python -m rewards.label --model sft_out/ --prompts prompts.jsonl --out prefs.jsonl [--port 8765]

It serves ``http://127.0.0.1:PORT/`` (a free port unless ``--port`` is given): a prompt, two completions
sampled from the model (``transformers`` ``generate``), and the count of recorded pairs. The person picks the
better one (button or key ``1`` / ``2``), marks a tie (``0``) or skips (``s``). Each answer appends a line:
``{"prompt", "chosen", "rejected"}`` for 1 or 2 (what ``python -m rewards.train preference`` reads), and
``{"prompt", "tie": [first, second]}`` for a tie: kept, but no (chosen, rejected) pair, so
:func:`rewards.train.read_preferences` skips it and a reader expecting ``chosen`` fails loudly on it. A skip
writes nothing.

Each line is one ``write()`` to a file opened with ``O_APPEND``, under a lock (threads) and ``flock`` (other
processes), then ``fsync``: killing the server never loses an answered choice or leaves half a line, and two
tabs never interleave lines. The browser sends back only a pair's random id and the choice (model text never
round-trips; each pair is recorded once). Model text enters the page through ``textContent`` only, under a
Content-Security-Policy without inline scripts: a completion holding ``<script>`` shows as text, never runs.
``--prompts`` is a JSONL of ``{"prompt": ...}`` (other keys ignored: SFT data works) or a text file with
one prompt per line, shown in a seeded random order, reshuffled each round.
"""

from __future__ import annotations

import fcntl
import html
import json
import os
import random
import secrets
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import tyro

from infra.cli import check_options
from infra.storage import jsonl_objects
from rewards.label_page import PAGE, SCRIPT
from rewards.train import TrainingDataError, read_preference_log

CHOICES = ("1", "2", "0", "skip")
PENDING_LIMIT = 1024  # shown but unanswered pairs kept (the oldest are forgotten; answering one says so)


class LabelError(ValueError):
    """Bad input to the labelling server; the message names the argument or the file and line."""


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """The prompts of a ``.jsonl`` file (a non-empty string ``"prompt"`` per line) or of a text file (one
    prompt per non-blank line). Raises :class:`LabelError` naming the file (and line) for a missing file, a
    bad line or a file without prompts."""
    file = Path(path)
    if not file.is_file():
        raise LabelError(
            f'--prompts {file}: no such file; pass a JSONL file of {{"prompt": ...}} lines or a text file '
            "with one prompt per line"
        )
    prompts = []
    if file.suffix == ".jsonl":
        for where, record in jsonl_objects(file, '{"prompt": "Once upon a time"}', LabelError):
            prompt = record.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise LabelError(f'{where}: needs a non-empty string "prompt", got {prompt!r}')
            prompts.append(prompt)
    else:
        for number, raw in enumerate(file.read_bytes().split(b"\n"), start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r")
            except UnicodeDecodeError as problem:
                raise LabelError(f"{file}:{number} is not UTF-8 text ({problem}); save it as UTF-8") from None
            if line.strip():
                prompts.append(line)
    if not prompts:
        raise LabelError(f"--prompts {file} holds no prompts; write one prompt per line")
    return prompts


class PreferenceLog:
    """The ``--out`` JSONL, append-only and crash-safe (see the module docstring). An existing file must be a
    valid preference log (:func:`rewards.train.read_preference_log`); its pairs and ties are counted."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.pairs = self.ties = 0
        if self.path.exists():
            if not self.path.is_file():
                raise LabelError(f"--out {self.path} is not a file; pass the path of a JSONL file")
            try:
                preferences, ties = read_preference_log(self.path)
            except TrainingDataError as error:
                raise LabelError(
                    f"--out {self.path} exists but is not a preference JSONL: {error}. Fix it, or pass a new "
                    "path (choices are appended; nothing is overwritten)"
                ) from None
            if self.path.stat().st_size:
                with self.path.open("rb") as file:
                    file.seek(-1, os.SEEK_END)
                    if file.read(1) != b"\n":  # the next line would join the last one
                        raise LabelError(f"--out {self.path} does not end with a newline; add one at its end")
            self.pairs, self.ties = len(preferences), len(ties)
        elif not self.path.parent.is_dir():
            raise LabelError(f"--out {self.path}: the directory {self.path.parent} does not exist; create it")
        self._lock = threading.Lock()
        self._fd: int | None = None  # opened by the first append: no choice, no file

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)  # the new file's name survives a crash too
            finally:
                os.close(directory)
        return self._fd

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line: one ``write()`` under the locks, then ``fsync``."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                view = memoryview(line)
                while view:  # a regular file takes the whole line at once; a short write continues it
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            if "tie" in record:
                self.ties += 1
            else:
                self.pairs += 1

    def counts(self) -> dict[str, int]:
        return {"pairs": self.pairs, "ties": self.ties}

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class Sampler(Protocol):
    """Returns two completions of a prompt (what the page shows as 1 and 2)."""

    def __call__(self, prompt: str) -> tuple[str, str]: ...


class ModelSampler:
    """Two sampled completions per prompt from a local HF causal LM (``generate`` with ``do_sample``); a pair
    that comes out identical is drawn again (up to 3 times). Calls are serialised by a lock."""

    def __init__(
        self,
        model: str,
        max_new_tokens: int = 48,
        temperature: float = 1.0,
        top_p: float = 0.95,
        seed: int = 0,
        chat: bool = False,
    ) -> None:
        if not Path(model, "config.json").is_file():
            raise LabelError(
                f"--model {model} is not a local HF model directory (no config.json); pass a directory "
                "written by save_pretrained, e.g. an SFT output or an exported policy"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(model, local_files_only=True, dtype=torch.float32)
        self.model.eval()
        if chat and not getattr(self.tokenizer, "chat_template", None):
            raise LabelError(f"--chat needs a tokenizer with a chat template; {model}'s has none")
        self.settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self.chat, self._lock = chat, threading.Lock()
        torch.manual_seed(seed)

    def __call__(self, prompt: str) -> tuple[str, str]:
        import torch

        text: Any = prompt
        if self.chat:
            messages = [{"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        with self._lock, torch.inference_mode():
            inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=not self.chat)
            start = inputs["input_ids"].shape[1]
            for _ in range(3):
                out = self.model.generate(
                    **inputs, do_sample=True, num_return_sequences=2, pad_token_id=pad, **self.settings
                )
                first, second = self.tokenizer.batch_decode(out[:, start:], skip_special_tokens=True)
                if first != second:
                    break
        return first, second


class LabelServer(ThreadingHTTPServer):
    """The page and its JSON API on ``127.0.0.1``: ``GET /api/pair`` (a new pair and the counts) and ``POST
    /api/choice`` (``{"id", "choice"}`` with choice ``"1"``, ``"2"``, ``"0"`` or ``"skip"``)."""

    daemon_threads = True

    def __init__(
        self, prompts: Sequence[str], sampler: Sampler, log: PreferenceLog, port: int = 0, seed: int = 0
    ) -> None:
        if not prompts:
            raise LabelError("no prompts to label; pass at least one")
        try:
            super().__init__(("127.0.0.1", port), Handler)
        except OSError as error:
            raise LabelError(f"--port {port}: cannot listen on it ({error}); pass another, or 0") from None
        self.prompts, self.sampler, self.log = list(prompts), sampler, log
        self._rng = random.Random(seed)
        self._order: list[int] = []
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, tuple[str, str, str]] = OrderedDict()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def next_pair(self) -> dict[str, Any]:
        """A fresh pair for the page: its id, prompt, the two completions, and the counts."""
        with self._lock:
            if not self._order:
                self._order = list(range(len(self.prompts)))
                self._rng.shuffle(self._order)
            prompt = self.prompts[self._order.pop()]
        first, second = self.sampler(prompt)
        if not (isinstance(first, str) and isinstance(second, str)):
            raise TypeError(
                f"the sampler returned {type(first).__name__}, {type(second).__name__}, not strings"
            )
        pair_id = secrets.token_urlsafe(12)
        with self._lock:
            self._pending[pair_id] = (prompt, first, second)
            while len(self._pending) > PENDING_LIMIT:
                self._pending.popitem(last=False)
        return {"id": pair_id, "prompt": prompt, "completions": [first, second], **self.log.counts()}

    def answer(self, pair_id: str, choice: str) -> dict[str, int]:
        """Record ``choice`` for pair ``pair_id`` (once); returns the counts. ``KeyError``: unknown pair."""
        if choice not in CHOICES:
            raise ValueError(f"choice {choice!r} is not one of {list(CHOICES)}")
        with self._lock:
            prompt, first, second = self._pending.pop(pair_id)
        records: dict[str, dict[str, Any]] = {
            "1": {"prompt": prompt, "chosen": first, "rejected": second},
            "2": {"prompt": prompt, "chosen": second, "rejected": first},
            "0": {"prompt": prompt, "tie": [first, second]},
        }
        if choice in records:
            try:
                self.log.append(records[choice])
            except OSError:  # e.g. a full disk: the pair stays open, so the choice can be sent again
                with self._lock:
                    self._pending[pair_id] = (prompt, first, second)
                raise
        return self.log.counts()

    def serve_in_thread(self) -> threading.Thread:
        """Serve from a daemon thread (tests, notebooks); stop with ``shutdown()`` and ``server_close()``."""
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread


class Handler(BaseHTTPRequestHandler):
    server: LabelServer
    SECURITY = {
        "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
        "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    }

    def log_message(self, format: str, *args: Any) -> None:  # quiet: a line per request is noise
        """No access log."""

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        for name, value in {**self.SECURITY, "Content-Type": content_type}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json; charset=utf-8")

    def _host_ok(self) -> bool:
        """Only this machine's own names: a page elsewhere cannot reach the API through DNS rebinding."""
        port = self.server.server_address[1]
        if self.headers.get("Host") in (f"127.0.0.1:{port}", f"localhost:{port}"):
            return True
        self._json(403, {"error": "requests must address 127.0.0.1 or localhost"})
        return False

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        path = self.path.split("?")[0]
        if path == "/":
            page = PAGE.replace("{path}", html.escape(self.server.log.path.name))
            self._send(200, page.encode(), "text/html; charset=utf-8")
        elif path == "/app.js":
            self._send(200, SCRIPT.encode(), "text/javascript; charset=utf-8")
        elif path == "/api/pair":
            try:
                self._json(200, self.server.next_pair())
            except Exception as error:  # the model failed: say so on the page and here, keep serving
                message = f"sampling failed: {type(error).__name__}: {error}"
                print(message, file=sys.stderr, flush=True)
                self._json(500, {"error": message})
        elif path == "/api/status":
            self._json(200, self.server.log.counts())
        else:
            self._json(404, {"error": f"no page {path}"})

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        if self.path != "/api/choice":
            return self._json(404, {"error": f"no endpoint {self.path}"})
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            return self._json(415, {"error": "send the choice as application/json"})
        declared = self.headers.get("Content-Length", "")
        length = int(declared) if declared.isdigit() else 0
        if not 0 < length <= 4096:
            return self._json(400, {"error": "the body must be a small JSON object {id, choice}"})
        try:
            body = json.loads(self.rfile.read(length))
        except RecursionError:
            return self._json(
                400, {"error": 'the body is nested too deeply; send {"id": ..., "choice": "1"}'}
            )
        except ValueError as error:
            return self._json(
                400, {"error": f'the body is not JSON ({error}); send {{"id": ..., "choice": "1"}}'}
            )
        missing = [key for key in ("id", "choice") if key not in body] if isinstance(body, dict) else None
        if missing is None or missing:
            what = f"lacks {', '.join(map(json.dumps, missing))}" if missing else "is not a JSON object"
            return self._json(400, {"error": f'the body {what}; send {{"id": ..., "choice": "1"}}'})
        try:
            counts = self.server.answer(str(body["id"]), str(body["choice"]))
        except KeyError:
            return self._json(409, {"error": "that pair was already answered or is unknown; load a new one"})
        except OSError as error:
            return self._json(500, {"error": f"could not write {self.server.log.path}: {error}; try again"})
        except (ValueError, TypeError) as error:
            return self._json(400, {"error": f'bad choice: {error}; send {{"id": ..., "choice": "1"}}'})
        self._json(200, counts)


@dataclass
class Args:
    """Collect human preferences between two sampled completions in a local web page."""

    model: str
    """Local HF directory of the causal LM that samples the completions (SFT output, exported policy)."""
    prompts: str
    """JSONL of {"prompt": ...} lines (other keys ignored), or a text file with one prompt per line."""
    out: str
    """JSONL the choices are appended to (created if missing; an existing one must be a preference JSONL)."""
    port: int = 0
    """Port on 127.0.0.1; 0 picks a free one."""
    max_new_tokens: int = 48
    """Tokens sampled per completion."""
    temperature: float = 1.0
    """Sampling temperature (> 0)."""
    top_p: float = 0.95
    """Nucleus sampling: the smallest token set with this probability mass, in (0, 1]."""
    seed: int = 0
    """Seeds the prompt order and the sampling."""
    chat: bool = False
    """Wrap each prompt as a user message with the tokenizer's chat template (instruct models)."""

    def __post_init__(self) -> None:
        check_options(self, positive=("max_new_tokens", "temperature", "top_p"))


def check_args(args: Args) -> None:
    """The settings' ranges, before anything loads."""
    if not 0 <= args.port <= 65535:
        raise LabelError(f"--port {args.port} must be in [0, 65535]; 0 picks a free port")
    if args.max_new_tokens < 1:
        raise LabelError(f"--max-new-tokens {args.max_new_tokens} must be >= 1, e.g. 48")
    if not args.temperature > 0:
        raise LabelError(f"--temperature {args.temperature} must be > 0, e.g. 1.0")
    if not 0 < args.top_p <= 1:
        raise LabelError(f"--top-p {args.top_p} must be in (0, 1], e.g. 0.95")


def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, prog="python -m rewards.label", description=__doc__)
    try:
        check_args(args)
        prompts = read_prompts(args.prompts)  # the cheap checks first, then the model
        log = PreferenceLog(args.out)
        sampler = ModelSampler(
            args.model, args.max_new_tokens, args.temperature, args.top_p, args.seed, args.chat
        )
        server = LabelServer(prompts, sampler, log, port=args.port, seed=args.seed)
    except LabelError as error:
        raise SystemExit(f"python -m rewards.label: error: {error}") from None
    print(f"labelling page: {server.url} ({log.pairs} pairs, {log.ties} ties in {log.path})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
