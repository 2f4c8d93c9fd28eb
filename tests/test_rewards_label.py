"""The preference-labelling page (rewards.label): its HTTP API, crash-safe appends, input errors, the real CLI
on a tiny model (killed with SIGKILL), and three pairs clicked through in headless Chromium."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rewards.label import LabelServer, PreferenceLog, main, read_prompts
from rewards.train import read_preference_log, read_preferences

REPO = Path(__file__).resolve().parents[1]
INJECTED = '<script>window.__injected = 1</script><img src="x" onerror="window.__injected = 2">'
CHROMIUM = Path("/usr/bin/chromium")


class StubSampler:
    """Completions "<prompt> / a<k>" and "<prompt> / b<k>"; the second pair's first completion is HTML."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, prompt: str) -> tuple[str, str]:
        self.calls += 1
        first = INJECTED if self.calls == 2 else f"{prompt} / a{self.calls}"
        return first, f"{prompt} / b{self.calls}"


@pytest.fixture
def server(tmp_path) -> Iterator[LabelServer]:
    log = PreferenceLog(tmp_path / "prefs.jsonl")
    server = LabelServer(["p one", "p two", "p three"], StubSampler(), log, seed=0)
    server.serve_in_thread()
    yield server
    server.shutdown()
    server.server_close()
    log.close()


def request(
    server: LabelServer | int, method: str, path: str, body=None, headers=None
) -> tuple[int, dict, dict]:
    """One HTTP request to a server (or a port): the status, the JSON (or {"text"}) and the headers."""
    port = server if isinstance(server, int) else server.server_address[1]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    sent = {"Content-Type": "application/json"} if data is not None else {}
    connection.request(method, path, body=data, headers={**sent, **(headers or {})})
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    is_json = response.getheader("Content-Type", "").startswith("application/json")
    return (
        response.status,
        json.loads(raw) if is_json else {"text": raw.decode()},
        dict(response.getheaders()),
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_http_api_records_choices_ties_and_skips(server) -> None:
    status, page, headers = request(server, "GET", "/")
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert '<script src="/app.js">' in page["text"] and "prefs.jsonl" in page["text"]
    assert request(server, "GET", "/app.js")[0] == 200
    out = server.log.path
    answers = ["1", "2", "0", "skip"]
    shown = []
    for choice in answers:
        status, pair, _ = request(server, "GET", "/api/pair")
        assert status == 200 and set(pair) == {"id", "prompt", "completions", "pairs", "ties"}
        shown.append(pair)
        status, counts, _ = request(server, "POST", "/api/choice", {"id": pair["id"], "choice": choice})
        assert status == 200
    assert counts == {"pairs": 2, "ties": 1}
    (a1, b1), (a2, b2), (a3, b3) = (p["completions"] for p in shown[:3])
    assert lines(out) == [
        {"prompt": shown[0]["prompt"], "chosen": a1, "rejected": b1},
        {"prompt": shown[1]["prompt"], "chosen": b2, "rejected": a2},  # "2": the second is chosen
        {"prompt": shown[2]["prompt"], "tie": [a3, b3]},
    ]
    assert a2 == INJECTED  # model text is stored verbatim (the page escapes it; see the browser test)
    assert len({p["prompt"] for p in shown[:3]}) == 3  # one round visits every prompt once
    assert read_preferences(out) == [(shown[0]["prompt"], a1, b1), (shown[1]["prompt"], b2, a2)]
    assert len(read_preference_log(out)[1]) == 1  # the tie is kept, but is no training pair
    # a pair is recorded once; bad requests are refused with a reason and change nothing
    assert request(server, "POST", "/api/choice", {"id": shown[0]["id"], "choice": "1"})[0] == 409
    status, pair, _ = request(server, "GET", "/api/pair")
    status, error, _ = request(server, "POST", "/api/choice", {"id": pair["id"], "choice": "3"})
    assert status == 400 and "choice '3' is not one of" in error["error"]
    assert request(server, "POST", "/api/choice", {"id": pair["id"], "choice": "1"})[0] == 200  # still open
    assert request(server, "POST", "/api/choice", b"{not json")[0] == 400
    status, error, _ = request(server, "POST", "/api/choice", b'{"id": 1}', {"Content-Type": "text/plain"})
    assert status == 415
    assert request(server, "GET", "/api/pair", headers={"Host": "evil.example:80"})[0] == 403
    assert request(server, "GET", "/nothing")[0] == 404
    assert request(server, "GET", "/api/status")[1] == {"pairs": 3, "ties": 1}
    assert len(lines(out)) == 4


def _append_many(path: str, worker: int, count: int) -> None:
    log = PreferenceLog(path)
    for index in range(count):
        log.append({"prompt": f"w{worker}-{index}", "chosen": "c" * 150_000, "rejected": str(worker) * 1000})
    log.close()


def test_appends_never_interleave_across_threads_and_processes(tmp_path) -> None:
    """Two processes with two threads each append 150 kB lines at once: every line stays whole."""
    out = tmp_path / "prefs.jsonl"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_append_many, args=(str(out), w, 10)) for w in range(2)]
    log = PreferenceLog(out)
    threads = [
        threading.Thread(
            target=lambda w=w: [
                log.append({"prompt": f"t{w}", "tie": ["x" * 150_000, "y"]}) for _ in range(10)
            ]
        )
        for w in range(2)
    ]
    for worker in [*processes, *threads]:
        worker.start()
    for worker in [*processes, *threads]:
        worker.join(timeout=120)
    assert all(p.exitcode == 0 for p in processes)
    preferences, ties = read_preference_log(out)  # raises on any torn or joined line
    assert (len(preferences), len(ties)) == (20, 20)
    assert sorted(p for p, _, _ in preferences) == sorted(f"w{w}-{i}" for w in range(2) for i in range(10))
    log.close()
    assert PreferenceLog(out).counts() == {"pairs": 20, "ties": 20}


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("prompts", "out", "match"),
    [
        (None, None, r"--prompts .*missing.jsonl: no such file"),
        ("", None, r"--prompts .*prompts.jsonl holds no prompts"),
        ('{"prompt": "a"}\n{oops\n', None, r"prompts.jsonl:2 is not valid JSON"),
        ('{"prompt": "a"}\n\n{"text": "b"}\n', None, r'prompts.jsonl:3: needs a non-empty string "prompt"'),
        (
            '{"prompt": "a"}\n',
            '{"prompt": "p", "chosen": "a", "rejected": "b"}\nnot json\n',
            r"prefs.jsonl:2 is not valid JSON",
        ),
        ('{"prompt": "a"}\n', '{"prompt": "p", "chosen": "a"}\n', r"prefs.jsonl:1 lacks \['rejected'\]"),
        ('{"prompt": "a"}\n', '{"prompt": "p", "tie": "a"}\n', r'prefs.jsonl:1: "tie" must be a list'),
        (
            '{"prompt": "a"}\n',
            '{"prompt": "p", "chosen": "a", "rejected": "b"}',
            r"does not end with a newline",
        ),
    ],
)
def test_cli_refuses_bad_inputs_by_name(tmp_path, prompts, out, match) -> None:
    prompt_file = (
        write(tmp_path / "prompts.jsonl", prompts) if prompts is not None else str(tmp_path / "missing.jsonl")
    )
    out_file = tmp_path / "prefs.jsonl"
    if out is not None:
        out_file.write_text(out)
    before = out_file.read_bytes() if out is not None else None
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "no-model"), "--prompts", prompt_file, "--out", str(out_file)])
    assert re.search(f"python -m rewards.label: error: .*{match}", str(exit_info.value.code)), (
        exit_info.value.code
    )
    assert (out_file.read_bytes() if out is not None else None) == before  # the user's file is untouched


def test_cli_refuses_missing_model_dir_and_bad_settings(tmp_path) -> None:
    prompts = write(tmp_path / "prompts.txt", "first prompt\n\nsecond prompt\n")
    assert read_prompts(prompts) == ["first prompt", "second prompt"]
    common = ["--prompts", prompts, "--out", str(tmp_path / "prefs.jsonl")]
    with pytest.raises(SystemExit, match=r"--model .*no-model is not a local HF model directory"):
        main(["--model", str(tmp_path / "no-model"), *common])
    with pytest.raises(SystemExit, match=r"--top-p 1.5 must be in \(0, 1\]"):
        main(["--model", str(tmp_path), "--top-p", "1.5", *common])
    with pytest.raises(SystemExit, match=r"--out .*nowhere/prefs.jsonl: the directory .* does not exist"):
        main(
            [
                "--model",
                str(tmp_path),
                "--prompts",
                prompts,
                "--out",
                str(tmp_path / "nowhere" / "prefs.jsonl"),
            ]
        )
    assert not (tmp_path / "prefs.jsonl").exists()


def test_real_cli_on_a_tiny_model_survives_sigkill(tmp_path) -> None:
    """python -m rewards.label samples from a tiny HF causal LM, counts the pair already in --out, and after
    SIGKILL every answered choice is in the file, whole."""
    from textenv.models import model_dir

    prompts = write(
        tmp_path / "prompts.jsonl", '{"prompt": "The weather today is"}\n{"prompt": "My doctor"}\n'
    )
    out = tmp_path / "prefs.jsonl"
    out.write_text('{"prompt": "earlier", "chosen": "a", "rejected": "b"}\n')
    command = [sys.executable, "-m", "rewards.label", "--model", str(model_dir("tiny-smollm2"))]
    command += ["--prompts", prompts, "--out", str(out), "--max-new-tokens", "6"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, found = "", None
        while found is None and (line := proc.stdout.readline()):  # until the banner, or the exit
            output += line
            found = re.search(r"http://127\.0\.0\.1:(\d+)/ \((\d+) pairs, (\d+) ties", line)
        assert found and found.group(2, 3) == ("1", "0"), output
        shown = []
        for choice in ("2", "0"):
            status, pair, _ = request(int(found[1]), "GET", "/api/pair")
            assert status == 200 and all(isinstance(text, str) for text in pair["completions"]), pair
            shown.append(pair)
            assert (
                request(int(found[1]), "POST", "/api/choice", {"id": pair["id"], "choice": choice})[0] == 200
            )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    (p1, (a1, b1)), (p2, (a2, b2)) = ((pair["prompt"], pair["completions"]) for pair in shown)
    assert lines(out)[1:] == [{"prompt": p1, "chosen": b1, "rejected": a1}, {"prompt": p2, "tie": [a2, b2]}]
    assert PreferenceLog(out).counts() == {"pairs": 2, "ties": 1}  # what a restarted server shows


def browser() -> tuple[object, str]:
    """Playwright's sync API and the Debian Chromium, or a skip that says what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed; run `bash install.sh dev`")
    path = shutil.which("chromium") or (str(CHROMIUM) if CHROMIUM.is_file() else None)
    if path is None:
        pytest.skip(
            "no chromium browser: `bash install.sh dev` installs Debian's chromium with apt-get when it runs "
            "as root on a machine with apt-get; neither was possible where this test ran"
        )
    return sync_playwright, path


def test_browser_clicks_through_three_pairs(server) -> None:
    sync_playwright, chromium = browser()
    out = server.log.path
    with sync_playwright() as playwright:
        browser_ = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser_.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url)
        seen = []
        for step, action in enumerate(["click 1", "key 2", "key 0"]):
            page.wait_for_selector("body[data-state=ready]", timeout=10_000)
            seen.append([page.inner_text(selector) for selector in ("#prompt", "#c1", "#c2")])
            kind, choice = action.split()
            if kind == "click":
                page.click("button[data-choice='1']")
            else:
                page.keyboard.press(choice)
            expected = ["1 pair recorded", "2 pairs recorded", "2 pairs recorded, 1 tie"][step]
            # a selector, not wait_for_function: the page's CSP forbids the eval that would need
            page.wait_for_selector(f"#count:text-is({expected!r})", timeout=10_000)
        page.wait_for_selector("body[data-state=ready]", timeout=10_000)
        injected = page.evaluate("window.__injected")
        second_pair_text = seen[1][1]
        browser_.close()
    assert injected is None  # neither the <script> nor the onerror handler ran
    assert second_pair_text == INJECTED  # shown literally, as text
    assert errors == []
    (p1, a1, b1), (p2, a2, b2), (p3, a3, b3) = seen
    assert lines(out) == [
        {"prompt": p1, "chosen": a1, "rejected": b1},
        {"prompt": p2, "chosen": b2, "rejected": a2},
        {"prompt": p3, "tie": [a3, b3]},
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 2000 + b"]" * 2000, "nested"),
        (b'{"id": "x"}', '"choice"'),
        (b'{"choice": "1"}', '"id"'),
        (b"[1, 2]", "JSON object"),
        (b'"1"', "JSON object"),
    ],
)
def test_a_malformed_post_gets_a_400_that_says_what_is_missing(server, body: bytes, message: str) -> None:
    status, error, _ = request(server, "POST", "/api/choice", body)
    assert status == 400 and message in error["error"], error
    assert request(server, "GET", "/api/pair")[0] == 200  # the server still answers
