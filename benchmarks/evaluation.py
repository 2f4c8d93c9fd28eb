"""Evaluation of a policy on a benchmark's fixed held-out prompts, used before and after training.

:func:`evaluate` samples completions for the first ``num_prompts`` test prompts with pure
sampling (temperature 1, no top-k/top-p) under ``torch.manual_seed(seed)``, so that before and after use the
same seeds. It reports the task reward, its side metrics, the KL to the reference, distinct-1/2, the
completion length and (given ``heldout_texts``) the perplexity of held-out human reviews under the policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents.policy import evaluate_completions
from benchmarks import metrics as text_metrics


@torch.no_grad()
def evaluate(
    lm: Any,
    reference: Any,
    env: Any,
    *,
    seed: int,
    num_prompts: int,
    batch_size: int = 16,
    heldout_texts: int = 0,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample completions for the first ``num_prompts`` test prompts of ``env`` and score them.

    ``batch_size`` prompts go to each ``generate()`` call; ``heldout_texts`` held-out human reviews (0: none)
    measure the policy's drift as their perplexity; ``metrics`` (name -> reward) are the task's side metrics.
    """
    core, tokenizer = env.unwrapped.core, env.unwrapped.tokenizer
    count = min(num_prompts, len(core.dataset))
    was_training, n_new = lm.training, core.max_new_tokens
    lm.eval()
    torch.manual_seed(seed)
    completions, kls, lengths = [], [], []
    for start in range(0, count, batch_size):
        encoded = [core.encode_prompt(i) for i in range(start, min(count, start + batch_size))]
        ids = torch.as_tensor(np.stack([e[0] for e in encoded]))  # (B, P)
        mask = torch.as_tensor(np.stack([e[1] for e in encoded]))  # (B, P)
        sampling = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "max_new_tokens": n_new}
        out = lm.generate(
            input_ids=ids,
            attention_mask=mask,
            pad_token_id=core.pad_token_id,
            eos_token_id=core.eos_token_id,
            **sampling,
        )[:, ids.shape[1] :]  # (B, <=N), padded after EOS
        is_eos = (out == core.eos_token_id).long()
        gen_mask = ((is_eos.cumsum(-1) - is_eos) == 0).long()  # (B, N): tokens up to the first EOS, inclusive
        full_ids, full_mask = torch.cat([ids, out], 1), torch.cat([mask, gen_mask], 1)  # (B, P+N)
        if reference is not lm:
            n_gen = out.shape[1]
            vocab = core.vocab_size
            log_ratio = (
                evaluate_completions(lm, full_ids, full_mask, n_gen, vocab).logprobs
                - evaluate_completions(reference, full_ids, full_mask, n_gen, vocab).logprobs
            )  # (B, n_gen)
            kls += (log_ratio * gen_mask).sum(-1).tolist()
        lengths += gen_mask.sum(-1).tolist()
        completions += core.decode([core.completion_ids(row) for row in out.numpy()])
    examples = [core.dataset[i] for i in range(count)]
    prompts, references = [e.prompt for e in examples], [e.reference for e in examples]
    scores = core.score(range(count), completions)
    results: dict[str, Any] = {
        "reward": float(scores.mean()),
        "reward_std": float(scores.std()),
        "_scores": [float(x) for x in scores],  # per prompt, in dataset order (for paired comparisons)
        "kl_to_reference": float(np.mean(kls)) if kls else 0.0,
        "distinct_1": text_metrics.distinct_n(completions, 1),
        "distinct_2": text_metrics.distinct_n(completions, 2),
        "completion_tokens": float(np.mean(lengths)),
    }
    for name, metric in (metrics or {}).items():
        results[name] = float(np.mean(metric(prompts, completions, references)))
    if heldout_texts:
        results["heldout_perplexity"] = text_metrics.perplexity(
            lm, tokenizer, text_metrics.heldout_reviews(heldout_texts)
        )
    lm.train(was_training)
    results["_samples"] = completions[:4]
    return results
