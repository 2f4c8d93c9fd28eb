"""Every code block of the documentation runs: ``docs/*.md`` and the README.

- ``python`` blocks run as written, a page's blocks in order in one namespace (as a reader pastes them), in a
  temporary working directory, after one documented substitution (:class:`Small`): the tiny test model and
  small budgets in place of SmolLM2 and the pages' budgets. Nothing else of a block changes.
- ``bash`` blocks are checked as command lines: every ``python -m <script>`` parses with that script's own
  command line (its ``Args`` dataclass through ``tyro.cli``, so a renamed or removed option fails), and every
  other command is one this repository documents (``bash install.sh [extra]`` with an extra of
  ``pyproject.toml``, a launcher, the linters).
- Blocks under any other fence (``text``, ``console``, no language, MyST directives) are not run.
- Each package's API page lists every module of the package.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
PACKAGES = ("infra", "rewards", "textenv", "agents", "benchmarks")


def fenced_blocks(text: str) -> Iterator[tuple[str, str, int]]:
    """``(language, code, line)`` of each fenced block (``line`` is the 1-based line of its first code line).

    >>> list(fenced_blocks("a\\n```python\\nx = 1\\n```\\n```{toctree}\\npage\\n```\\n"))
    [('python', 'x = 1\\n', 3), ('{toctree}', 'page\\n', 6)]
    """
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(`{3,})(\S*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, language, start = opening.group(1), opening.group(2), i + 1
        end = start
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        yield language, "".join(line + "\n" for line in lines[start:end]), start + 1
        i = end + 1


class Small(ast.NodeTransformer):
    """The one substitution the pages' Python gets before it runs in CI.

    - A keyword argument named in :attr:`KEYWORDS` takes that value wherever a call passes it (the model, the
      budgets, the batch sizes), and so does ``CheckpointCallback``'s first argument (its save interval); a
      call that sets ``episodes_per_rollout`` but not ``minibatch_size`` gets ``minibatch_size=2`` as well.
    - ``gym.make`` / ``gym.make_vec`` of a textenv id get the tiny model, and a single-turn one
      ``max_new_tokens=8`` (the pages leave the default model to the env, so the keywords are added when
      missing).
    - A string naming a file of this repository (``"agents/configs/ds_cpu.json"``) becomes its absolute path,
      since the blocks run in a temporary directory.
    """

    KEYWORDS: dict[str, Any] = {
        "model": "tiny-sp",
        "total_timesteps": 64,
        "num_envs": 2,
        "n_eval_episodes": 2,
        "eval_freq": 16,
        "episodes_per_rollout": 4,
        "minibatch_size": 2,
        "progress_bar": False,
    }
    MAKE = {"model": "tiny-sp", "max_new_tokens": 8}

    def visit_Call(self, node: ast.Call) -> ast.Call:
        self.generic_visit(node)
        for keyword in node.keywords:
            if keyword.arg in self.KEYWORDS:
                keyword.value = ast.Constant(self.KEYWORDS[keyword.arg])
        given = {keyword.arg for keyword in node.keywords}
        if "episodes_per_rollout" in given and "minibatch_size" not in given:
            node.keywords.append(ast.keyword("minibatch_size", ast.Constant(self.KEYWORDS["minibatch_size"])))
        name = ast.unparse(node.func)
        if name == "CheckpointCallback" and node.args:
            node.args[0] = ast.Constant(16)
        if name in ("gym.make", "gym.make_vec") and node.args and isinstance(node.args[0], ast.Constant):
            env_id = str(node.args[0].value)
            if env_id.startswith(("TextGen", "TextChat")):
                wanted = self.MAKE if env_id.startswith("TextGen") else {"model": self.MAKE["model"]}
                missing = [k for k in wanted if k not in given]
                node.keywords += [ast.keyword(k, ast.Constant(wanted[k])) for k in missing]
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        if isinstance(node.value, str) and "/" in node.value and (ROOT / node.value).is_file():
            return ast.Constant(str(ROOT / node.value))
        return node


def small(code: str) -> str:
    """A block's code after :class:`Small`.

    >>> print(small('PPO(env, model="smollm2-135m-instruct").learn(total_timesteps=20_000)'))
    PPO(env, model='tiny-sp').learn(total_timesteps=64)
    >>> print(small('gym.make("TextGen-v0", render_mode="ansi")'))
    gym.make('TextGen-v0', render_mode='ansi', model='tiny-sp', max_new_tokens=8)
    """
    return ast.unparse(ast.fix_missing_locations(Small().visit(ast.parse(code))))


def python_pages() -> list[Path]:
    return [page for page in PAGES if any(lang == "python" for lang, _, _ in fenced_blocks(page.read_text()))]


@pytest.mark.parametrize("page", python_pages(), ids=lambda page: page.name)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # checkpoints, exports and runs/ land here
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem}"}
    blocks = [(code, line) for lang, code, line in fenced_blocks(page.read_text()) if lang == "python"]
    for code, line in blocks:
        where = f"{page.relative_to(ROOT)}:{line}"
        exec(compile(small(code), where, "exec"), namespace)  # a failure's traceback names the page and line


def shell_commands(text: str) -> Iterator[tuple[str, int]]:
    """Each command of the ``bash`` blocks of ``text`` (continuation lines joined, comments dropped, ``&&``
    chains split), with its line."""
    for language, code, line in fenced_blocks(text):
        if language != "bash":
            continue
        for offset, command_line in enumerate(code.replace("\\\n", " ").splitlines()):
            command_line = re.sub(r"(^|\s)#.*$", "", command_line).strip()
            for command in filter(None, (part.strip() for part in command_line.split("&&"))):
                yield command, line + offset


def inline_commands(text: str) -> Iterator[str]:
    """``python -m <script> ...`` commands quoted inline in the prose (outside fenced blocks)."""
    prose = "".join(text.split("```")[::2])
    yield from (match.group(1) for match in re.finditer(r"`(?:\S*/)?(python -m [\w.]+[^`]*)`", prose))


# the names of pyproject.toml's [project.optional-dependencies] (tomllib is Python 3.11+)
_EXTRAS_SECTION = (ROOT / "pyproject.toml").read_text().split("optional-dependencies]")[1].split("\n[")[0]
EXTRAS = set(re.findall(r"^([\w-]+) = \[", _EXTRAS_SECTION, flags=re.MULTILINE))
LAUNCHERS = {"torchrun", "deepspeed"}
TOOLS = {".venv/bin/ruff", "ruff"}


def check_command(command: str) -> str | None:
    """None if ``command`` is valid today; else what is wrong. ``python -m`` scripts of this repository parse
    with their ``Args`` (tyro exits on an unknown option or a bad value)."""
    words = shlex.split(command)
    program = words[0]
    if program == "bash":
        extra = words[2] if len(words) > 2 else None
        if words[1:2] != ["install.sh"] or (extra is not None and extra not in EXTRAS):
            return f"bash {' '.join(words[1:])}: install.sh takes one of {sorted(EXTRAS)}"
        return None
    if program in LAUNCHERS or program in TOOLS:
        return None
    if program.endswith("python") and len(words) > 1 and words[1].endswith(".py"):
        return None  # the reader's own training script
    if not program.endswith("python") or words[1:2] != ["-m"]:
        return f"{program}: not a command these docs use; add it to tests/test_docs.py if it is meant"
    module, args = words[2], words[3:]
    if module.split(".")[0] not in PACKAGES:
        return None if importlib.util.find_spec(module) else f"python -m {module}: no such module"
    cli = importlib.import_module("textenv.__main__" if module == "textenv" else module)
    import tyro

    try:
        tyro.cli(cli.Args, args=args)
    except SystemExit as error:
        return f"python -m {module} {' '.join(args)}: the command line does not parse ({error})"
    return None


def test_shell_commands_parse(capsys: pytest.CaptureFixture[str]) -> None:
    problems, scripts = [], set()
    for page in PAGES:
        text = page.read_text()
        commands = [(command, f"line {line}") for command, line in shell_commands(text)]
        commands += [(command, "inline") for command in inline_commands(text)]
        for command, where in commands:
            problem = check_command(command)
            if problem:
                problems.append(f"{page.relative_to(ROOT)} {where}: {problem}\n{capsys.readouterr().err}")
            scripts.update(re.findall(r"python -m ([\w.]+)", command))
    assert not problems, "\n".join(problems)
    main_scripts = {"benchmarks.run", "benchmarks.suite", "benchmarks.report", "rewards.train", "agents.sft"}
    assert main_scripts <= scripts, f"no {main_scripts - scripts} command found: is the block parser broken?"


def test_check_command_fails_on_a_bad_option() -> None:
    assert check_command(".venv/bin/python -m benchmarks.report runs/ --out x") is None
    bad = ".venv/bin/python -m benchmarks.report runs/ --no-such-option"
    assert "does not parse" in str(check_command(bad))
    assert "install.sh takes" in str(check_command("bash install.sh nonsense"))
    assert "not a command" in str(check_command("rm -rf /"))


@pytest.mark.parametrize("package", PACKAGES)
def test_api_page_lists_every_module(package: str) -> None:
    """``docs/api/<package>.md`` has an ``automodule`` for each module of the package (the one list to update
    when a module is added, moved or removed)."""
    page = (ROOT / "docs" / "api" / f"{package}.md").read_text()
    listed = set(re.findall(r"^\.\. automodule:: (\S+)", page, flags=re.MULTILINE))
    found = pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}.")
    modules = {package} | {module.name for module in found}
    missing, gone = sorted(modules - listed), sorted(listed - modules)
    assert not missing, f"docs/api/{package}.md lacks {missing}: add a heading and an automodule each"
    assert not gone, f"docs/api/{package}.md lists {gone}, which do not exist (any more)"
