"""Bad input raises a clear error that names the problem and the fix."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import textenv


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (512, ValueError, "outside the vocabulary"),
        (-1, ValueError, "outside the vocabulary"),
        (1.0, TypeError, "integer token ids"),
        ("a", TypeError, "integer token ids"),
        (np.array([1, 2]), ValueError, "shape"),
    ],
)
def test_bad_token_action(env_kwargs: dict, action: object, error: type, match: str) -> None:
    env = gym.make("TextGen-v0", **env_kwargs)
    env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.step(action)


def test_bad_sequence_action(env_kwargs: dict) -> None:
    env = gym.make("TextGenSeq-v0", **env_kwargs)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        env.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        env.step(np.full(5, 10_000))


def test_vector_bad_actions(env_kwargs: dict) -> None:
    envs = gym.make_vec("TextGen-v0", num_envs=2, vectorization_mode="vector_entry_point", **env_kwargs)
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(np.array([1, 2]))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        envs.step(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        envs.step(np.array([1, 99999]))


@pytest.mark.parametrize("env_id", ["TextGen-v0", "TextGenSeq-v0"])
def test_step_after_end_needs_reset(env_id: str, env_kwargs: dict) -> None:
    env = gym.make(env_id, **env_kwargs).unwrapped  # unwrapped: our own message, not OrderEnforcing's
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())
    env.reset(seed=0)
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
    with pytest.raises(RuntimeError, match=r"after the episode ended.*reset\(\)"):
        env.step(env.action_space.sample())


def test_unknown_names(env_kwargs: dict) -> None:
    with pytest.raises(ValueError, match="Known names: smollm2-135m-instruct, tiny-smollm2"):
        gym.make("TextGen-v0", model="no-such-model")
    with pytest.raises(ValueError, match="Known tasks"):
        gym.make("TextGen-v0", tokenizer=env_kwargs["tokenizer"], task="no-such-task")
    with pytest.raises(ValueError, match="empty"):
        gym.make("TextGen-v0", tokenizer=env_kwargs["tokenizer"], dataset=[])
    with pytest.raises(ValueError, match="either task= .* or dataset="):
        gym.make("TextGen-v0", tokenizer=env_kwargs["tokenizer"], task="shakespeare", dataset=["x"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        gym.make("TextGen-v0", **{**env_kwargs, "max_new_tokens": 0})


@pytest.mark.parametrize(
    ("reward_fn", "error", "match"),
    [
        (lambda p, c, r=None: np.zeros(len(c) + 1), ValueError, "one score per completion"),
        (lambda p, c, r=None: np.full(len(c), np.nan), ValueError, "non-finite"),
        (lambda p, c, r=None: np.full(len(c), np.inf), ValueError, "non-finite"),
        (lambda p, c, r=None: ["good"] * len(c), TypeError, "not a numeric array"),
    ],
)
def test_bad_reward_fn(env_kwargs: dict, reward_fn: object, error: type, match: str) -> None:
    env = gym.make("TextGenSeq-v0", **{**env_kwargs, "reward_fn": reward_fn})
    env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.step(env.action_space.sample())
    with pytest.raises(TypeError, match="callable"):
        gym.make("TextGenSeq-v0", **{**env_kwargs, "reward_fn": 3})


def test_unknown_model_loaders() -> None:
    with pytest.raises(ValueError, match="Known names"):
        textenv.load_model("gpt-17")
    with pytest.raises(ValueError, match="Known names"):
        textenv.load_tokenizer("./no/such/dir")


# ---- dataset= (a file path, or a bare string by mistake) -----------------------------------------------


def test_dataset_path_is_read_and_a_bare_string_is_refused(env_kwargs: dict, tmp_path) -> None:
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "Hello there"}\n{"prompt": "Good day", "reference": " sir"}\n')
    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt\nHello there\nGood day\n")
    kwargs = {key: value for key, value in env_kwargs.items() if key != "dataset"}
    for dataset in (str(jsonl), jsonl, str(csv), csv):
        env = gym.make("TextGen-v0", dataset=dataset, **kwargs).unwrapped
        assert env.dataset.prompts == ["Hello there", "Good day"] and env.dataset.name == "prompts"
    with pytest.raises(TypeError, match=r"dataset='prompts' is a single str, not a list of prompts.*\.jsonl"):
        gym.make("TextGen-v0", dataset="prompts", **kwargs)
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        gym.make("TextGen-v0", dataset=str(tmp_path / "missing.jsonl"), **kwargs)
    with pytest.raises(ValueError, match=r"prompts.txt is not a .jsonl or .csv file.*one prompt per line"):
        gym.make("TextGen-v0", dataset=tmp_path / "prompts.txt", **kwargs)
    with pytest.raises(TypeError, match="got a single dict"):
        gym.make("TextGen-v0", dataset={"prompt": "Hello"}, **kwargs)
    with pytest.raises(TypeError, match=r"item 1: the prompt is NoneType \(None\)"):
        gym.make("TextGen-v0", dataset=["Hello", {"prompt": None}], **kwargs)


# ---- vocab_size ------------------------------------------------------------------------------------------


def test_vocab_size_must_cover_the_tokenizer(env_kwargs: dict) -> None:
    with pytest.raises(ValueError, match=r"vocab_size=100 is smaller than.*512 tokens.*>= len\(tokenizer\)"):
        gym.make("TextGen-v0", **env_kwargs, vocab_size=100)
    for bad in (0, -5, 2.5, True, "600"):
        with pytest.raises(ValueError, match=f"vocab_size={bad!r} must be a positive int"):
            gym.make("TextGen-v0", **env_kwargs, vocab_size=bad)
    env = gym.make("TextGen-v0", **env_kwargs, vocab_size=600).unwrapped
    assert env.action_space.n == 600 and env.observation_space["input_ids"].high.max() == 599


# ---- reset options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["TextGen-v0", "TextGenSeq-v0"])
def test_reset_index_out_of_range(env_id: str, env_kwargs: dict) -> None:
    env = gym.make(env_id, **env_kwargs)  # the dataset has 5 prompts
    assert env.reset(options={"index": 4})[1]["prompt"] == env_kwargs["dataset"][4].prompt
    for index in (5, 7, -1):
        with pytest.raises(ValueError, match=rf'options\["index"\]={index} is outside the dataset of 5'):
            env.reset(options={"index": index})
    with pytest.raises(TypeError, match=r'options\["index"\]=\'2\' must be an int dataset index in \[0, 5\)'):
        env.reset(options={"index": "2"})
    with pytest.raises(ValueError, match=r"unknown keys \['indices'\]; this env takes options=\{'index'"):
        env.reset(options={"indices": [1]})


@pytest.mark.parametrize("env_id", ["TextGen-v0", "TextGenSeq-v0"])
def test_vector_reset_indices_checked(env_id: str, env_kwargs: dict) -> None:
    envs = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **env_kwargs)
    _, info = envs.reset(seed=0, options={"indices": np.array([4, 0])})
    assert info["prompt"].tolist() == [env_kwargs["dataset"][4].prompt, env_kwargs["dataset"][0].prompt]
    with pytest.raises(ValueError, match=r'options\["indices"\]\[1\]=5 is outside the dataset of 5'):
        envs.reset(options={"indices": [0, 5]})
    with pytest.raises(ValueError, match=r'options\["indices"\]\[0\]=-1 is outside'):
        envs.reset(options={"indices": [-1, 0]})
    with pytest.raises(ValueError, match=r'options\["indices"\] has 3 indices for 2 envs; pass one per env'):
        envs.reset(options={"indices": [0, 1, 2]})
    with pytest.raises(TypeError, match=r'options\["indices"\] must be a list of 2 dataset indices'):
        envs.reset(options={"indices": 3})
    with pytest.raises(ValueError, match=r"unknown keys \['index'\]"):
        envs.reset(options={"index": 3})


# ---- reward_fn output, signature, and a reward that raises ---------------------------------------------


@pytest.mark.parametrize(
    ("reward_fn", "error", "match"),
    [
        (lambda p, c, r=None: "0.5", TypeError, "dtype <U3, which is not a numeric array of real numbers"),
        (lambda p, c, r=None: ["0.5"] * len(c), TypeError, "not a numeric array"),
        (lambda p, c, r=None: np.full(len(c), 1 + 2j), TypeError, "dtype complex128"),
        (lambda p, c, r=None: np.ones(len(c), dtype=bool), TypeError, "dtype bool"),
        (lambda p, c, r=None: [None] * len(c), TypeError, "dtype object"),
        (lambda p, c, r=None: np.full(len(c), 1e39), ValueError, "beyond the float32 range"),
        (lambda p, c, r=None: np.full(len(c), -1e39), ValueError, "beyond the float32 range"),
    ],
)
def test_reward_output_must_be_real_and_fit_float32(
    env_kwargs: dict, reward_fn: object, error: type, match: str
) -> None:
    for env_id in ("TextGen-v0", "TextGenSeq-v0"):
        env = gym.make(env_id, **{**env_kwargs, "reward_fn": reward_fn})
        env.reset(seed=0)
        with pytest.raises(error, match=f"reward_fn <lambda> returned .*{match}"):
            terminated = truncated = False
            while not (terminated or truncated):
                _, _, terminated, truncated, _ = env.step(env.action_space.sample())


def test_reward_fn_signature_checked_when_the_env_is_made(env_kwargs: dict) -> None:
    import rewards

    def two_args(prompts, completions):
        return np.zeros(len(completions))

    def needs_keyword(prompts, completions, references, *, scale):
        return np.zeros(len(completions))

    with pytest.raises(TypeError, match=r"reward_fn two_args\(prompts, completions\) cannot be called as "):
        gym.make("TextGen-v0", **{**env_kwargs, "reward_fn": two_args})
    with pytest.raises(TypeError, match="references=None"):
        gym.make("TextGen-v0", **{**env_kwargs, "reward_fn": needs_keyword})
    with pytest.raises(TypeError, match=r"reward_fn is the class VaderSentiment.*VaderSentiment\(\)"):
        gym.make("TextGen-v0", **{**env_kwargs, "reward_fn": rewards.VaderSentiment})
    for fine in (
        lambda *args: np.zeros(len(args[1])),
        lambda p, c, r: np.zeros(len(c)),
        rewards.VaderSentiment(),
    ):
        gym.make("TextGen-v0", **{**env_kwargs, "reward_fn": fine})


class FailsOnce:
    """A reward that raises on its first call, then scores every completion 1.0."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, prompts, completions, references=None) -> np.ndarray:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("reward server timed out")
        return np.ones(len(completions), dtype=np.float32)


def test_vector_env_is_consistent_after_the_reward_raises(env_kwargs: dict) -> None:
    envs = gym.make_vec(
        "TextGen-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        **{**env_kwargs, "reward_fn": FailsOnce()},
    )
    eos = envs.unwrapped.eos_token_id
    obs, _ = envs.reset(seed=0)
    before = {key: value.copy() for key, value in obs.items()}
    with pytest.raises(RuntimeError, match="timed out"):
        envs.step(np.array([eos, 7]))  # row 0 ends: its reward is computed, and raises
    assert all(np.array_equal(envs.unwrapped._obs()[key], before[key]) for key in before)
    obs, reward, terminated, truncated, info = envs.step(np.array([eos, 7]))  # the same step, again
    assert terminated.tolist() == [True, False] and reward.tolist() == [1.0, 0.0]
    assert info["_final_obs"].tolist() == [True, False] and info["final_info"]["completion"][0] == ""
    assert obs["attention_mask"][0, 8:].sum() == 0  # row 0 was reset to a fresh prompt
    assert obs["attention_mask"][1, 8:].tolist() == [1, 0, 0, 0, 0]  # row 1 kept its one token
    for _ in range(envs.unwrapped.max_new_tokens):  # both rows keep running and ending normally
        obs, reward, terminated, truncated, info = envs.step(np.array([7, 7]))
    assert truncated.any()


@pytest.mark.parametrize("env_id", ["TextGen-v0", "TextGenSeq-v0"])
def test_single_env_is_consistent_after_the_reward_raises(env_id: str, env_kwargs: dict) -> None:
    env = gym.make(env_id, **{**env_kwargs, "reward_fn": FailsOnce()}).unwrapped
    env.reset(seed=0)
    eos = env.eos_token_id
    action = eos if env_id == "TextGen-v0" else np.full(5, eos)
    with pytest.raises(RuntimeError, match="timed out"):
        env.step(action)
    _, reward, terminated, _, info = env.step(action)
    assert terminated and reward == 1.0 and info["completion"] == ""


# ---- other constructor arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"max_new_tokens": "8"}, ValueError, "max_new_tokens='8' must be a positive int"),
        ({"max_new_tokens": True}, ValueError, "max_new_tokens=True must be a positive int"),
        ({"max_prompt_tokens": -1}, ValueError, "max_prompt_tokens=-1 must be a positive int"),
        ({"group_size": 0}, ValueError, "group_size=0 must be a positive int"),
        ({"render_mode": "rgb_array"}, ValueError, r"render_mode='rgb_array' is not supported.*'ansi'"),
        ({"split": "dev"}, ValueError, "split='dev' is not known; use one of train, validation, test"),
        ({"split": "test"}, ValueError, "split='test' applies to the prompts of task=, not to dataset="),
        ({"tokenizer": "tiny-sp"}, TypeError, "tokenizer='tiny-sp' is a name, not a tokenizer; pass model="),
        ({"tokenizer": object()}, TypeError, r"tokenizer is object, which lacks \['eos_token_id'"),
        ({"tokenizer": None, "model": 3}, TypeError, "model= takes a model name or the path"),
    ],
)
@pytest.mark.filterwarnings("ignore:.*render_mode")  # gymnasium's own warning, before our error
def test_bad_env_arguments(env_kwargs: dict, overrides: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        gym.make("TextGen-v0", **{**env_kwargs, **overrides})


def test_bad_vector_env_arguments(env_kwargs: dict) -> None:
    for env_id in ("TextGen-v0", "TextGenSeq-v0"):
        for num_envs in (0, True, 2.0):
            with pytest.raises(ValueError, match=f"num_envs={num_envs!r} must be a positive int"):
                gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **env_kwargs)
    envs = gym.make_vec(
        "TextGen-v0", num_envs=np.int64(2), vectorization_mode="vector_entry_point", **env_kwargs
    )
    assert envs.num_envs == 2


def test_task_env_split_with_own_dataset(sp_tokenizer) -> None:
    with pytest.raises(ValueError, match="split='test' applies to the prompts of task="):
        gym.make("TextGen-ErrorRate-v0", tokenizer=sp_tokenizer, dataset=["Fix: teh cat"], split="test")
    with pytest.raises(ValueError, match="split='dev' is not known"):
        gym.make("TextGen-ErrorRate-v0", tokenizer=sp_tokenizer, split="dev")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--episodes", "0"], "--episodes 0 must be at least 1, e.g. --episodes 4."),
        (["--max-new-tokens", "-1"], "--max-new-tokens -1 must be at least 1"),
        (["--task", "imdb"], "--task 'imdb' is not known; use one of drugs-sentiment, shakespeare"),
        (["--temperature", "-0.5"], "--temperature -0.5 must be >= 0 (0 is greedy)"),
        (["--seed", "-1"], "--seed -1 must be >= 0"),
    ],
)
def test_demo_cli_refuses_nonsense(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from textenv.__main__ import main

    with pytest.raises(SystemExit) as exit_info:  # before any model is loaded
        main(argv)
    assert exit_info.value.code == 2
    assert message in " ".join(capsys.readouterr().err.replace("│", " ").split())


@pytest.mark.parametrize("env_id", ["TextGen-v0", "TextGenSeq-v0"])
def test_vector_reset_seeds_checked(env_id: str, env_kwargs: dict) -> None:
    envs = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **env_kwargs)
    first, _ = envs.reset(seed=np.int64(3))  # numpy ints are ints
    again, _ = envs.reset(seed=[3, 4])
    assert np.array_equal(first["input_ids"], again["input_ids"])
    with pytest.raises(TypeError, match=r"seed='3' must be an int \(row i gets seed \+ i\), a list"):
        envs.reset(seed="3")
    with pytest.raises(TypeError, match="seed=3.5 must be an int"):
        envs.reset(seed=3.5)
    with pytest.raises(ValueError, match=r"seed\[1\]=-2 must be an int >= 0 or None"):
        envs.reset(seed=[1, -2])
    with pytest.raises(ValueError, match="Got 3 seeds for 2 envs"):
        envs.reset(seed=[1, 2, 3])


def test_task_env_reward_arguments(sp_tokenizer) -> None:
    def zero(prompts, completions, references=None):
        return np.zeros(len(completions))

    # rewards by name are the scripts' (benchmarks.named_rewards); the envs take reward objects
    with pytest.raises(
        TypeError, match="TextGen-ErrorRate-v0 takes no reward= .* pass a reward object as reward_fn="
    ):
        gym.make("TextGen-ErrorRate-v0", tokenizer=sp_tokenizer, reward="cer", reward_fn=zero)
    with pytest.raises(TypeError, match="takes no reward_model= .* rewards.PreferenceRewardModel.load"):
        gym.make("TextGen-Preference-v0", tokenizer=sp_tokenizer, reward_model="rm/pref")
    env = gym.make("TextGen-ErrorRate-v0", tokenizer=sp_tokenizer, reward=None, reward_fn=zero)  # None: unset
    assert env.unwrapped.reward_fn is zero

    from benchmarks import named_rewards

    with pytest.raises(
        ValueError, match="reward_model= is used by the 'preference' reward only, not by 'wer'"
    ):
        named_rewards.reward_kwargs("error-rate", reward_model="rm/pref")
    with pytest.raises(ValueError, match="Unknown reward 'bleu'; use one of classifier, vader, wer"):
        named_rewards.reward_kwargs("error-rate", "bleu")
