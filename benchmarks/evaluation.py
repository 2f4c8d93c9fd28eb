"""Evaluation of a policy on a benchmark's fixed held-out prompts, used before and after training.

:func:`evaluate` samples completions for the first ``num_prompts`` test prompts under
``torch.manual_seed(seed)``, so that before and after use the same seeds, with ``sampling`` (default pure
sampling: temperature 1, no top-k/top-p; a task preset passes its own, the one its rollouts use). Generation
stops at the env's ``stop_token_ids`` (EOS and the task's stop tokens, e.g. newlines), as the env does. It
reports the task reward, its side metrics, the KL to the reference, distinct-1/2, the
completion length and (given ``heldout_texts``) the perplexity of held-out human reviews under the policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents.policy import evaluate_completions
from agents.sampling import PLAIN_SAMPLING, Sampling
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
    sampling: Sampling = PLAIN_SAMPLING,
) -> dict[str, Any]:
    """Sample completions for the first ``num_prompts`` test prompts of ``env`` and score them.

    ``batch_size`` prompts go to each ``generate()`` call; ``heldout_texts`` held-out human reviews (0: none)
    measure the policy's drift as their perplexity; ``metrics`` (name -> reward) are the task's side metrics;
    ``sampling`` is the decoding distribution (the KL to the reference is measured under it too, as the
    agents measure it).
    """
    core, tokenizer = env.unwrapped.core, env.unwrapped.tokenizer
    count = min(num_prompts, len(core.dataset))
    was_training, n_new = lm.training, core.max_new_tokens
    lm.eval()
    torch.manual_seed(seed)
    completions, kls, lengths = [], [], []
    device = next(lm.parameters()).device  # inputs follow the model (a GPU under DeepSpeed)
    stops = torch.as_tensor(core.stop_token_ids, device=device)  # (S,): EOS and the task's stop tokens
    generation = {
        "do_sample": True,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "temperature": sampling.temperature,
        "max_new_tokens": n_new,
    }
    for start in range(0, count, batch_size):
        encoded = [core.encode_prompt(i) for i in range(start, min(count, start + batch_size))]
        ids = torch.as_tensor(np.stack([e[0] for e in encoded]), device=device)  # (B, P)
        mask = torch.as_tensor(np.stack([e[1] for e in encoded]), device=device)  # (B, P)
        out = lm.generate(
            input_ids=ids,
            attention_mask=mask,
            pad_token_id=core.pad_token_id,
            eos_token_id=list(core.stop_token_ids),
            **generation,
        )[:, ids.shape[1] :]  # (B, <=N), padded after the first stop token
        is_stop = torch.isin(out, stops).long()
        gen_mask = ((is_stop.cumsum(-1) - is_stop) == 0).long()  # (B, N): up to the first stop, inclusive
        full_ids, full_mask = torch.cat([ids, out], 1), torch.cat([mask, gen_mask], 1)  # (B, P+N)
        if reference is not lm:
            n_gen = out.shape[1]
            vocab = core.vocab_size
            log_ratio = (
                evaluate_completions(lm, full_ids, full_mask, n_gen, vocab, sampling=sampling).logprobs
                - evaluate_completions(
                    reference, full_ids, full_mask, n_gen, vocab, sampling=sampling
                ).logprobs
            )  # (B, n_gen)
            kls += (log_ratio * gen_mask).sum(-1).tolist()
        lengths += gen_mask.sum(-1).tolist()
        completions += core.decode([core.completion_ids(row) for row in out.cpu().numpy()])
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
