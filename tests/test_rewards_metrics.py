"""Known-value, robustness and pickling tests of the non-learned rewards."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

import rewards
from rewards import (
    BLEU,
    ChrF,
    EmbeddingSimilarity,
    ErrorRate,
    LengthPenalty,
    RepetitionPenalty,
    RougeL,
    VaderSentiment,
    WeightedSum,
)


@pytest.fixture(scope="module")
def embedding() -> EmbeddingSimilarity:
    return EmbeddingSimilarity(batch_size=4)


# ---- error rate: hand-computed values ------------------------------------------------------------


def test_wer_hand_computed() -> None:
    reward = ErrorRate()
    references = ["the cat sat on the mat", "hello world", "a b c d"]
    completions = ["the cat sat on a mat", "hello", "a x c d e"]
    # 1 substitution / 6 words; 1 deletion / 2 words; 1 substitution + 1 insertion / 4 words
    expected = [-1 / 6, -1 / 2, -2 / 4]
    np.testing.assert_allclose(reward(["p"] * 3, completions, references), expected, rtol=1e-6)
    assert reward(["p"] * 3, completions, references).dtype == np.float32


def test_wer_batch_mean_is_mean_of_sample_rates() -> None:
    scores = ErrorRate()(["p"] * 2, ["a b", "x y"], ["a b", "a b"])
    assert scores.tolist() == [0.0, -1.0]
    assert float(scores.mean()) == -0.5  # R = -(1/N) sum E_i


def test_wer_normalisation_switches() -> None:
    completion, reference = ["The  Cat, sat."], ["the cat sat"]
    assert ErrorRate()(["p"], completion, reference).tolist() == [0.0]
    # case kept: "The" != "the"; punctuation kept: "Cat," and "sat." are different words
    assert ErrorRate(lowercase=False, remove_punctuation=False)(["p"], completion, reference).tolist() == [
        -1.0
    ]
    assert ErrorRate(lowercase=False)(["p"], completion, reference).tolist() == pytest.approx(
        [-2 / 3]
    )  # The, Cat


def test_cer_hand_computed() -> None:
    reward = ErrorRate(unit="char")
    assert reward(["p"], ["kitten"], ["sitting"]).tolist() == pytest.approx([-3 / 7])  # 2 subs + 1 ins
    assert reward(["p"], ["ab  c"], ["ab c"]).tolist() == [0.0]  # whitespace runs collapse


def test_error_rate_empty_texts() -> None:
    reward = ErrorRate()
    assert reward(["p"] * 3, ["", "", "one two"], ["a b", "", ""]).tolist() == [-1.0, 0.0, -2.0]


def test_error_rate_missing_references() -> None:
    with pytest.raises(ValueError, match="needs references"):
        ErrorRate()(["p"], ["c"])
    with pytest.raises(ValueError, match=r"references\[1\] are None"):
        ErrorRate()(["p", "q"], ["c", "d"], ["r", None])
    with pytest.raises(ValueError, match="unit='word'"):
        ErrorRate(unit="token")


# ---- similarity ----------------------------------------------------------------------------------


def test_embedding_paraphrase_beats_unrelated(embedding: EmbeddingSimilarity) -> None:
    reference = "The medicine relieved my headache quickly."
    completions = ["This drug cured my head pain fast.", "The stock market closed higher on Friday."]
    paraphrase, unrelated = embedding(["p", "p"], completions, [reference, reference])
    assert paraphrase > unrelated + 0.3
    assert embedding(["p"], [reference], [reference])[0] == pytest.approx(1.0, abs=1e-5)


def test_embedding_uses_prompt_without_reference_and_caches(embedding: EmbeddingSimilarity) -> None:
    prompt = "I love this medication."
    to_prompt = embedding([prompt, prompt], ["I love this medication.", "Rain is expected tomorrow."])
    assert to_prompt[0] == pytest.approx(1.0, abs=1e-5) and to_prompt[1] < 0.5
    mixed = embedding([prompt, "x"], ["I love this medication.", "x"], [None, "I love this medication."])
    assert mixed[0] == pytest.approx(1.0, abs=1e-5)
    assert prompt in embedding._cache
    small = EmbeddingSimilarity(cache_size=1)
    small._tokenizer, small._model = embedding._tokenizer, embedding._model
    small(["a", "b"], ["x", "y"], ["first", "second"])
    assert list(small._cache) == ["second"]


def test_embedding_empty_is_zero(embedding: EmbeddingSimilarity) -> None:
    assert embedding(["p", "p"], ["", "  "], ["ref", "ref"]).tolist() == [0.0, 0.0]
    assert embedding(["", "p"], ["text", "text"]).tolist()[0] == 0.0


def test_bleu_chrf_rouge_known_values() -> None:
    text = "the patient felt much better after two days"
    for reward in (BLEU(), ChrF(), ChrF(word_order=2), RougeL()):
        identical, unrelated = reward(["p", "p"], [text, "stocks fell sharply today"], [text, text])
        assert identical == pytest.approx(1.0) and unrelated < 0.2, reward
        assert reward(["p"], [""], [text]).tolist() == [0.0]
    assert RougeL()(["p"], ["a b c"], ["a b c d e"]).tolist() == pytest.approx([2 * 0.6 / 1.6])
    assert BLEU()([text], [text]).tolist() == pytest.approx([1.0])  # to the prompt when references is None


# ---- sentiment and shaping -----------------------------------------------------------------------


def test_vader_sign() -> None:
    scores = VaderSentiment()(
        ["p"] * 3, ["This works wonderfully, I am so happy!", "Terrible, I hate it.", ""]
    )
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0
    assert VaderSentiment(scale=-1.0)(["p"], ["I love it"])[0] < 0


def test_length_repetition_weighted_sum() -> None:
    assert LengthPenalty(target_length=2, unit="char")(["p"], ["abcd"]).tolist() == [-1.0]
    assert RepetitionPenalty(n=1)(["p"], ["go go go go"]).tolist() == [-0.75]
    combined = WeightedSum([LengthPenalty(target_length=4), RepetitionPenalty(n=1)], weights=[2.0, 1.0])
    assert combined(["p"], ["go go go go"]).tolist() == [-0.75]
    assert WeightedSum([lambda p, c, r=None: np.ones(len(c))])(["p"], ["c"]).tolist() == [1.0]
    with pytest.raises(ValueError, match="one weight per reward"):
        WeightedSum([LengthPenalty()], weights=[1.0, 2.0])


# ---- bad inputs, the same for every reward -------------------------------------------------------

CHEAP_REWARDS = [
    ErrorRate(),
    ErrorRate(unit="char"),
    BLEU(),
    ChrF(),
    RougeL(),
    VaderSentiment(),
    LengthPenalty(),
    RepetitionPenalty(),
    WeightedSum([VaderSentiment(), LengthPenalty()], weights=[1.0, 0.5]),
    rewards.WholeText(VaderSentiment()),
]


@pytest.mark.parametrize("reward", CHEAP_REWARDS, ids=lambda r: type(r).__name__)
def test_bad_inputs(reward) -> None:
    with pytest.raises(TypeError, match=r"completions\[1\] is int, expected str"):
        reward(["p", "p"], ["ok", 3], ["r", "r"])
    with pytest.raises(TypeError, match=r"prompts\[0\] is NoneType"):
        reward([None], ["ok"], ["r"])
    with pytest.raises(TypeError, match="single str"):
        reward("p", "c", "r")
    with pytest.raises(ValueError, match=r"len\(prompts\)=2, len\(completions\)=1"):
        reward(["p", "p"], ["c"], ["r", "r"])
    with pytest.raises(ValueError, match=r"len\(references\)=1"):
        reward(["p", "p"], ["c", "c"], ["r"])
    empty = reward([], [], [])
    assert empty.shape == (0,) and empty.dtype == np.float32


def test_embedding_bad_inputs(embedding: EmbeddingSimilarity) -> None:
    with pytest.raises(TypeError, match=r"references\[0\] is bytes"):
        embedding(["p"], ["c"], [b"r"])
    with pytest.raises(ValueError, match="lengths differ"):
        embedding(["p"], ["c", "d"])


def test_non_finite_scores_raise() -> None:
    def broken(prompts, completions, references=None):
        return np.array([0.0, math.nan, math.inf])

    with pytest.raises(ValueError, match=r"non-finite scores at indices \[1, 2\]"):
        WeightedSum([broken])(["p"] * 3, ["c"] * 3)
    with pytest.raises(ValueError, match=r"shape \(2,\); expected \(3,\)"):
        WeightedSum([lambda p, c, r=None: np.zeros(2)])(["p"] * 3, ["c"] * 3)


@pytest.mark.parametrize("reward", [*CHEAP_REWARDS, EmbeddingSimilarity()], ids=lambda r: type(r).__name__)
def test_pickle_round_trip(reward) -> None:
    prompts, completions, references = ["Rate it:"], ["It helped a lot, great drug."], ["It helped a lot."]
    before = reward(prompts, completions, references)
    clone = pickle.loads(pickle.dumps(reward))
    np.testing.assert_allclose(clone(prompts, completions, references), before, rtol=1e-5)
    assert len(pickle.dumps(reward)) < 10_000  # models and caches are not pickled


def test_public_names() -> None:
    for name in rewards.__all__:
        assert getattr(rewards, name) is not None


@pytest.mark.parametrize(
    ("scores", "error", "match"),
    [
        (["0.5", "0.1"], TypeError, "dtype <U3, which is not a numeric array of real numbers"),
        ("0.5", TypeError, "str of dtype <U3"),
        ([1 + 2j, 0.0], TypeError, "dtype complex128"),
        (np.array([True, False]), TypeError, "dtype bool"),
        ([0.5, None], TypeError, "dtype object"),
        ([[0.5], [0.5, 1.0]], TypeError, "not a numeric array"),
        ([0.5, 1e39], ValueError, r"beyond the float32 range \(\|x\| <= 3.4e\+38\) at indices \[1\]"),
        ([-1e39, 0.5], ValueError, r"beyond the float32 range .* at indices \[0\]"),
    ],
)
def test_scores_must_be_real_and_fit_float32(scores: object, error: type, match: str) -> None:
    with pytest.raises(error, match=f"MyReward returned .*{match}"):
        rewards.check_scores(scores, 2, "MyReward")
    with pytest.raises(error, match=rf"WeightedSum part 0 \(<lambda>\) returned .*{match}"):
        WeightedSum([lambda p, c, r=None: scores])(["p", "p"], ["c", "d"])
    assert rewards.check_scores(np.array([1, 2], dtype=np.int64), 2, "ok").dtype == np.float32


def test_weighted_sum_refuses_bad_parts_when_made() -> None:
    with pytest.raises(
        TypeError, match=r"rewards\[0\] is the class ErrorRate, not a reward; .*ErrorRate\(\)"
    ):
        WeightedSum([ErrorRate, LengthPenalty])
    with pytest.raises(TypeError, match=r"rewards\[1\] is the class LengthPenalty"):
        WeightedSum([ErrorRate(), LengthPenalty])
    with pytest.raises(TypeError, match=r"rewards\[1\] is int, which is not callable; pass a function"):
        WeightedSum([VaderSentiment(), 3])
    with pytest.raises(TypeError, match=r"rewards\[0\] two\(prompts, completions\) cannot be called as"):

        def two(prompts, completions):
            return np.zeros(len(completions))

        WeightedSum([two])
    with pytest.raises(TypeError, match=r"rewards is VaderSentiment; pass a list of rewards"):
        WeightedSum(VaderSentiment())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"weights\[1\]='x' must be a real number"):
        WeightedSum([VaderSentiment(), LengthPenalty()], weights=[1.0, "x"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"weights=0.5 must be a list with one number per reward"):
        WeightedSum([VaderSentiment()], weights=0.5)  # type: ignore[arg-type]
    WeightedSum([lambda *args: np.zeros(len(args[1]))], weights=[np.float32(2.0)])  # *args is fine


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: ErrorRate(lowercase="no"), TypeError, "lowercase='no' must be True or False"),
        (
            lambda: ErrorRate(normalize_whitespace=None),
            TypeError,
            "normalize_whitespace=None must be True or",
        ),
        (lambda: LengthPenalty(target_length="4"), TypeError, "target_length='4' must be an int, e.g. "),
        (lambda: LengthPenalty(target_length=2.5), TypeError, "target_length=2.5 must be an int"),
        (lambda: LengthPenalty(target_length=0), ValueError, "target_length=0 must be >= 1"),
        (lambda: RepetitionPenalty(n=1.5), TypeError, "n=1.5 must be an int, e.g. n=2"),
        (lambda: RepetitionPenalty(unit="token"), ValueError, "unit='token' is not known"),
        (lambda: ChrF(word_order=2.0), TypeError, "word_order=2.0 must be an int"),
        (lambda: ChrF(lowercase="yes"), TypeError, "lowercase='yes' must be True or False"),
        (lambda: BLEU(tokenize=None), TypeError, "tokenize=None must be a str, e.g. tokenize='13a'"),
        (lambda: BLEU(tokenize="words"), ValueError, "tokenize='words' is not a sacrebleu tokenizer"),
        (lambda: RougeL(use_stemmer="porter"), TypeError, "use_stemmer='porter' must be True or False"),
        (lambda: VaderSentiment(scale="2"), TypeError, "scale='2' must be a real number, e.g. scale=1.0"),
        (lambda: VaderSentiment(scale=True), TypeError, "scale=True must be a real number"),
        (lambda: VaderSentiment(scale=math.inf), ValueError, "scale=inf must be a finite number"),
        (lambda: EmbeddingSimilarity(batch_size=2.5), TypeError, "batch_size=2.5 must be an int"),
        (lambda: EmbeddingSimilarity(cache_size=-1), ValueError, "cache_size=-1 must be >= 0"),
        (lambda: EmbeddingSimilarity(model="/no/such/encoder"), ValueError, "is not a local directory; pass"),
        (lambda: EmbeddingSimilarity(model=None), TypeError, "model=None must be a str"),
    ],
)
def test_reward_settings_checked_when_made(make, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make()
