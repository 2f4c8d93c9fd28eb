"""Every numeric command-line option of the scripts refuses a negative, non-finite or mistyped value in
``__post_init__``, naming the flag: ``--sft-examples -5`` no longer means "all but 5"."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from infra.cli import NUMERIC

SCRIPTS = {
    "benchmarks.pipeline": {},
    "benchmarks.chat": {},
    "benchmarks.env_overhead": {},
    "benchmarks.gpu": {},
    "benchmarks.memory": {},
    "benchmarks.quickstart": {},
    "benchmarks.reward_speed": {},
    "benchmarks.throughput": {},
    "benchmarks.vs_trl": {},
    "benchmarks.run": {},
    "benchmarks.suite": {},
    "benchmarks.sweep": {},
    "rewards.label": {"model": "m", "prompts": "p", "out": "o"},
    "textenv.__main__": {},
    "agents.sft": {"model": "m", "data": "d", "output": "o"},
}
SIGNED = {("benchmarks.throughput", "lora_rank")}  # refused in main() with its own message


def numeric_options() -> list[tuple[str, str]]:
    cases = []
    for module in SCRIPTS:
        args = importlib.import_module(module).Args
        for field in dataclasses.fields(args):
            if str(field.type) in NUMERIC and (module, field.name) not in SIGNED:
                cases.append((module, field.name))
    return cases


def make(module: str, **values: object) -> object:
    args = importlib.import_module(module).Args
    required = {
        f.name: "x"
        for f in dataclasses.fields(args)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return args(**{**required, **SCRIPTS[module], **values})


@pytest.mark.parametrize(("module", "name"), numeric_options())
def test_a_negative_or_non_numeric_option_is_refused_naming_the_flag(module: str, name: str) -> None:
    flag = "--" + name.replace("_", "-")
    for bad in (-5, float("nan"), True, "lots"):
        with pytest.raises((ValueError, TypeError), match=f"({flag}|{name})"):
            make(module, **{name: bad})


def test_the_pipeline_refuses_a_negative_count_on_its_command_line() -> None:
    import tyro

    from benchmarks import pipeline

    with pytest.raises(SystemExit):
        tyro.cli(pipeline.Args, args=["--sft-examples", "-5"])
    with pytest.raises(ValueError, match="--sft-examples -5 must be >= 0"):
        pipeline.Args(sft_examples=-5)
    with pytest.raises(ValueError, match="--ema-decay"):
        pipeline.Args(ema_decay=1.5)
