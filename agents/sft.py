"""Supervised fine-tuning (step 1 of the DeepSpeed-Chat / InstructGPT recipe) on the agents' DeepSpeed engine.

    python -m agents.sft --model smollm2-135m-instruct --data sft.jsonl --output runs/sft
    python -m agents.sft --model tiny-sp --data sft.jsonl --output runs/sft --epochs 2 --precision fp32
    python -m agents.sft ... --resume                      # continue from <output>/checkpoint
    torchrun --nproc_per_node 2 -m agents.sft ...          # 2 processes, each trains its share of a batch

The model is any textenv name (``"smollm2-135m-instruct"``, ``"tiny-sp"``...) or a local HF directory. It
trains with :mod:`infra.engine` (the engine, precision ``"auto"``/``"bf16"``/``"fp32"`` and ZeRO settings
of the RL agents; ``--deepspeed-config`` takes their JSON) and a linear warmup/decay of the learning rate.

Data: a JSON-lines file (or a list of such dicts), one example per line, either
``{"prompt": ..., "completion": ...}`` or a chat ``{"messages": [{"role": ..., "content": ...}, ...]}``.
A prompt is tokenized as the tokenizer does by default (special tokens included), the completion without
them and followed by EOS. A chat is rendered with the tokenizer's chat template; a tokenizer without one gets
the plain format ``"<role>: <content>\\n"`` per message, EOS closing each assistant message. The loss
counts only completion tokens (and EOS), or the assistant messages with their end-of-turn markup; prompts,
system and user turns are context. An example longer than ``max_length`` loses context from the left first,
then tokens at the end (:func:`agents.sft_data.truncate`; one left without a trained token is dropped with a
warning). A bad line raises a ``ValueError`` naming the file and line.

Held-out data is ``eval_data`` or a seeded ``eval_fraction`` of the data; its loss (mean NLL per completion
token) and perplexity are measured before training, every ``eval_every`` steps (0: each epoch) and at the end.
The output directory gets::

    model/           the fine-tuned LM as an HF directory (safetensors), the input of steps 2 and 3
    checkpoint/      the latest resumable checkpoint (agents.checkpoint's format: engine, RNG, counters)
    tensorboard/     train/loss, train/learning_rate, eval/loss, eval/perplexity, time/tokens_per_s
    metrics.json     held-out loss and perplexity before and after, steps and tokens
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro
from transformers import PreTrainedModel

from agents import checkpoint
from agents.config import check_number
from agents.layout import load_lm
from agents.ptx import masked_lm_loss, token_nll
from agents.sft_data import SFTExample, collate, fingerprint, load_examples
from infra import engine
from infra.cli import check_options
from infra.storage import atomic_write_text


@dataclass
class SFTConfig:
    """Settings of one supervised fine-tuning run."""

    epochs: int = 1
    """Passes over the training data."""
    batch_size: int = 8
    """Examples per optimizer step and process (DeepSpeed's micro batch)."""
    learning_rate: float = 2e-5
    """Peak AdamW learning rate (DeepSpeed's ``optimizer.params.lr`` wins if the config sets it)."""
    warmup_fraction: float = 0.1
    """Fraction of the steps with linearly rising learning rate; it then decays linearly to 0."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping; None disables it."""
    max_length: int = 512
    """Tokens kept per example (prompt and completion together)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (None: all epochs)."""
    eval_fraction: float = 0.1
    """Held-out fraction of the data when no ``eval_data`` is given."""
    eval_every: int = 0
    """Measure held-out loss every this many steps (0: at the end of each epoch)."""
    save_every: int = 0
    """Write ``<output>/checkpoint`` every this many steps (0: at the end of each epoch)."""
    precision: str = "auto"
    """``"auto"`` (bf16 where the hardware runs it natively), ``"bf16"`` or ``"fp32"``."""
    deepspeed_config: str | None = None
    """A DeepSpeed JSON config merged over the defaults (ZeRO stage, optimizer...), as for the agents."""
    seed: int = 0
    """Seeds the held-out split, the data order and the engine's RNG."""
    logdir: str | None = None
    """TensorBoard directory; None: ``<output>/tensorboard``; ``""`` disables logging."""
    progress_bar: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("eval_every", "save_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps must be an int >= 1 or None (all epochs), got {self.max_steps!r}")
        check_number("learning_rate", self.learning_rate, "2e-5")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}; e.g. 2e-5")
        check_number("warmup_fraction", self.warmup_fraction, "0.1")
        check_number("eval_fraction", self.eval_fraction, "0.1")
        if not 0 <= self.warmup_fraction < 1 or not 0 < self.eval_fraction < 1:
            raise ValueError(
                f"need 0 <= warmup_fraction < 1 and 0 < eval_fraction < 1, got {self.warmup_fraction} and "
                f"{self.eval_fraction}"
            )
        if self.max_grad_norm is not None:
            check_number("max_grad_norm", self.max_grad_norm, "1.0")
        check_options(self, positive=("epochs", "batch_size", "max_length", "max_steps", "max_grad_norm"))
        if self.precision not in engine.PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not known; use one of {engine.PRECISIONS}")


class SFTTrainer:
    """Fine-tunes a causal LM on prompt/completion or chat data with a DeepSpeed engine; see the module
    docstring. ``train()`` runs it and returns the metrics; ``evaluate()`` measures the held-out loss."""

    def __init__(
        self,
        model: str | os.PathLike | PreTrainedModel,
        data: str | os.PathLike | Sequence[dict[str, Any]],
        output: str | os.PathLike,
        config: SFTConfig | None = None,
        eval_data: str | os.PathLike | Sequence[dict[str, Any]] | None = None,
        tokenizer: Any = None,
    ) -> None:
        import textenv

        self.config = cfg = config or SFTConfig()
        self.output, self.model_source = Path(output), model
        if tokenizer is None and isinstance(model, PreTrainedModel):
            raise ValueError("pass tokenizer= with a model object (or pass the model's name or directory)")
        self.tokenizer = tokenizer or textenv.load_tokenizer(str(model))
        self.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0
        examples = load_examples(data, self.tokenizer, cfg.max_length)
        if eval_data is None:
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
            n_eval = max(1, round(cfg.eval_fraction * len(examples)))
            if len(examples) - n_eval < 1:
                raise ValueError(
                    f"{len(examples)} examples leave none to train on; add data or pass eval_data"
                )
            self.eval_examples = [examples[i] for i in sorted(order[:n_eval])]
            self.train_examples = [examples[i] for i in sorted(order[n_eval:])]
        else:
            self.train_examples, self.eval_examples = (
                examples,
                load_examples(eval_data, self.tokenizer, cfg.max_length),
            )
        engine.init_distributed()
        self.rank, self.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.steps_per_epoch = math.ceil(len(self.train_examples) / (cfg.batch_size * self.world))
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.lm = load_lm(model).train()
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        self.lm.to(self.device)
        self.ds_config = engine.build_config(
            cfg.deepspeed_config,
            cfg.learning_rate,
            cfg.max_grad_norm,
            cfg.batch_size,
            on_gpu=self.device.type == "cuda",
            precision=cfg.precision,
        )
        if self.ds_config["zero_optimization"].get("stage", 0) == 3:
            raise ValueError(
                "ZeRO stage 3 is not supported by SFT (its evaluation and export use whole weights); use "
                "stage 0, 1 or 2 in the DeepSpeed config"
            )
        peak = self.ds_config["optimizer"]["params"]["lr"]
        self.ds_config.setdefault(
            "scheduler",
            {
                "type": "WarmupDecayLR",
                "params": {
                    "total_num_steps": self.total_steps,
                    "warmup_num_steps": max(1, int(cfg.warmup_fraction * self.total_steps)),
                    "warmup_min_lr": 0.0,
                    "warmup_max_lr": peak,
                    "warmup_type": "linear",
                },
            },
        )
        torch.manual_seed(cfg.seed)
        self.engine = engine.initialize(self.lm, self.ds_config)
        self.precision = "bf16" if self.ds_config["bf16"]["enabled"] else "fp32"
        self.step, self.tokens, self.history = 0, 0, {"eval": []}  # type: ignore[var-annotated]
        self.fingerprint = fingerprint(self.train_examples)

    # ---- data ----------------------------------------------------------------------------------------------
    def batches(self, epoch: int) -> list[list[SFTExample]]:
        """This process's batches of ``epoch``: a seeded shuffle, ``batch_size * world`` examples a step."""
        order = torch.randperm(
            len(self.train_examples), generator=torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        ).tolist()
        size = self.config.batch_size
        step_rows = size * self.world
        out = []
        for start in range(0, len(order), step_rows):
            chunk = order[start : start + step_rows]
            mine = chunk[self.rank * size : (self.rank + 1) * size] or chunk[:size]  # a short last step
            out.append([self.train_examples[i] for i in mine])
        return out

    # ---- evaluation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out loss (mean NLL per trained token), perplexity and the token count."""
        self.lm.eval()
        nll, count = 0.0, 0
        size = self.config.batch_size
        for start in range(0, len(self.eval_examples), size):
            ids, attention, loss_mask = collate(
                self.eval_examples[start : start + size], self.pad_token_id, self.device
            )
            logits = self.engine(input_ids=ids, attention_mask=attention).logits  # (B, T, V)
            weights = loss_mask[:, 1:].float()  # (B, T-1)
            nll += float((token_nll(logits, ids) * weights).sum())
            count += int(weights.sum())
        self.lm.train()
        loss = nll / max(1, count)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": float(count)}

    # ---- checkpoints ---------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.output / "checkpoint"

    def save_checkpoint(self) -> None:
        """Write ``<output>/checkpoint`` atomically: engine weights, optimizer and schedule, RNG, counters."""
        cfg = self.config
        state = checkpoint.AgentState(
            algo="SFT",
            config=dataclasses.asdict(cfg),
            settings={
                "seed": cfg.seed,
                "model_source": str(self.model_source),
                "max_new_tokens": None,
                "precision_used": self.precision,
                "deepspeed_config": cfg.deepspeed_config,
            },
            counters={"num_timesteps": self.tokens, "n_updates": self.step, "episode_num": 0},
            extra={"data": self.fingerprint, "world_size": self.world, "history": self.history},
        )
        checkpoint.save(self.checkpoint_dir, state, lms={}, modules={}, engine=self.engine)

    def load_checkpoint(self) -> None:
        """Continue from ``<output>/checkpoint`` (same data and settings, else a ValueError saying which)."""
        saved = checkpoint.read(self.checkpoint_dir, "SFT")
        extra, same = saved.state.extra, ("batch_size", "seed", "epochs", "max_length", "eval_fraction")
        changed = [k for k in same if saved.state.config.get(k) != getattr(self.config, k)]
        if extra.get("data") != self.fingerprint or extra.get("world_size") != self.world or changed:
            raise ValueError(
                f"{self.checkpoint_dir} was written for other data or settings ({changed or 'data/processes'}"
                "); resume with the same data, settings and number of processes, or choose a new --output"
            )
        saved.load_engine(self.engine, self.precision)
        saved.restore_rng()
        self.step, self.tokens = saved.state.counters["n_updates"], saved.state.counters["num_timesteps"]
        self.history = extra["history"]

    def _check_weights(self) -> None:
        """Stop before a checkpoint or an export can hold non-finite weights (a diverging run)."""
        bad = [n for n, p in self.engine.module.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise FloatingPointError(
                f"the SFT weights became non-finite (inf/NaN) at step {self.step + 1}, e.g. {bad[:3]}; "
                f"nothing was exported, and {self.checkpoint_dir} (if written) holds the last good state. "
                f"Lower learning_rate (now {self.config.learning_rate}) or keep max_grad_norm"
            )

    def export(self, path: str | os.PathLike | None = None) -> Path:
        """The fine-tuned LM as an HF directory (safetensors, tokenizer); default ``<output>/model``. After
        bf16 training it holds the optimizer's fp32 master weights, not their bf16 rounding."""
        target = Path(path) if path is not None else self.output / "model"
        checkpoint.export_lm(self.master_lm(), target, self.tokenizer)  # every rank calls it, rank 0 writes
        return target

    def master_lm(self) -> PreTrainedModel:
        """The LM with the fp32 master weights: itself in fp32 training, else an fp32 copy filled from the
        optimizer (DeepSpeed's unfused bf16 optimizer's fp32 groups, or ZeRO's fp32 partitions)."""
        if self.precision == "fp32":
            return self.lm
        from deepspeed.utils import safe_get_full_fp32_param

        optimizer = self.engine.optimizer
        groups = zip(
            getattr(optimizer, "fp16_groups", []), getattr(optimizer, "fp32_groups", []), strict=False
        )
        masters = {id(low): high for lows, highs in groups for low, high in zip(lows, highs, strict=True)}
        fp32_lm = type(self.lm)(self.lm.config).float()  # same architecture, fp32
        fp32_lm.load_state_dict(self.lm.state_dict())
        fp32_lm.generation_config = self.lm.generation_config
        with torch.no_grad():
            for param, target in zip(self.lm.parameters(), fp32_lm.parameters(), strict=True):
                master = masters.get(id(param))
                master = master if master is not None else safe_get_full_fp32_param(param)
                target.copy_((master if master is not None else param).detach().float().view_as(target))
        return fp32_lm.eval()

    # ---- training ------------------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict[str, Any]:
        """Run (or with ``resume`` continue) the fine-tuning; export ``<output>/model``, write
        ``<output>/metrics.json`` and return the metrics."""
        from tqdm.auto import tqdm

        cfg = self.config
        if resume:
            self.load_checkpoint()
        elif (self.checkpoint_dir / checkpoint.STATE_FILE).exists():
            raise FileExistsError(
                f"{self.checkpoint_dir} holds a checkpoint of an earlier run; pass resume=True (--resume) to "
                "continue it, or choose a new output directory"
            )
        self.output.mkdir(parents=True, exist_ok=True)
        writer = self._writer()
        if not self.history["eval"]:
            self._record_eval(writer)
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc="sft", disable=not cfg.progress_bar or self.rank
        )
        start, start_tokens = time.perf_counter(), self.tokens
        while self.step < self.total_steps:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            for batch in self.batches(epoch)[skip:]:
                ids, attention, loss_mask = collate(batch, self.pad_token_id, self.device)
                logits = self.engine(input_ids=ids, attention_mask=attention).logits  # (B, T, V)
                loss = masked_lm_loss(logits, ids, loss_mask)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite SFT loss at step {self.step}; the last checkpoint is the last good "
                        "state. Lower learning_rate"
                    )
                self.engine.backward(loss)
                self.engine.step()
                self._check_weights()
                self.step += 1
                self.tokens += int(loss_mask[:, 1:].sum())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if writer is not None:
                    rate = (self.tokens - start_tokens) / max(time.perf_counter() - start, 1e-9)
                    writer.add_scalar("train/loss", loss.item(), self.step)
                    writer.add_scalar("train/learning_rate", self.engine.get_lr()[0], self.step)
                    writer.add_scalar("time/tokens_per_s", rate, self.step)
                end_of_epoch = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or (
                    not cfg.eval_every and end_of_epoch
                ):
                    self._record_eval(writer)
                if (cfg.save_every and self.step % cfg.save_every == 0) or (
                    not cfg.save_every and end_of_epoch
                ):
                    self.save_checkpoint()
                if self.step >= self.total_steps:
                    break
        bar.close()
        if self.history["eval"][-1]["step"] != self.step:
            self._record_eval(writer)
        if writer is not None:
            writer.close()
        model_dir = self.export()
        first, last = self.history["eval"][0], self.history["eval"][-1]
        metrics = {
            "eval_loss_before": first["loss"],
            "eval_perplexity_before": first["perplexity"],
            "eval_loss": last["loss"],
            "eval_perplexity": last["perplexity"],
            "eval_tokens": last["tokens"],
            "steps": self.step,
            "train_tokens": self.tokens,
            "precision": self.precision,
            "model_dir": str(model_dir),
            "history": self.history["eval"],
        }
        if self.rank == 0:
            atomic_write_text(self.output / "metrics.json", json.dumps(metrics, indent=2))
        return metrics

    def _writer(self) -> Any:
        if self.config.logdir == "" or self.rank:
            return None
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(self.config.logdir or str(self.output / "tensorboard"))
        writer.add_text(
            "hparams", json.dumps({**dataclasses.asdict(self.config), "model": str(self.model_source)})
        )
        return writer

    def _record_eval(self, writer: Any) -> None:
        result = self.evaluate()
        self.history["eval"].append({"step": self.step, **result})
        if writer is not None:
            writer.add_scalar("eval/loss", result["loss"], self.step)
            writer.add_scalar("eval/perplexity", result["perplexity"], self.step)


def train_sft(
    model: str | os.PathLike | PreTrainedModel,
    data: str | os.PathLike | Sequence[dict[str, Any]],
    output: str | os.PathLike,
    config: SFTConfig | None = None,
    eval_data: str | os.PathLike | Sequence[dict[str, Any]] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``model`` on ``data`` into ``output`` (see the module docstring); returns the metrics."""
    return SFTTrainer(model, data, output, config, eval_data).train(resume=resume)


@dataclass(kw_only=True)
class Args(SFTConfig):
    """Supervised fine-tuning on the agents' DeepSpeed engine; the output feeds reward models and PPO."""

    model: str
    """A textenv model name (e.g. smollm2-135m-instruct, tiny-sp) or a local HF directory."""
    data: str
    """JSON-lines file of {"prompt", "completion"} or {"messages": [...]} examples."""
    output: str
    """Run directory: model/ (HF export), checkpoint/, tensorboard/, metrics.json."""
    eval_data: str | None = None
    """Held-out JSON-lines file; None holds out eval_fraction of --data."""
    resume: bool = False
    """Continue from <output>/checkpoint."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = tyro.cli(Args, args=argv, prog="python -m agents.sft", description=__doc__)
    config = SFTConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SFTConfig)})
    metrics = train_sft(args.model, args.data, args.output, config, args.eval_data, args.resume)
    if torch.distributed.get_rank() == 0:
        print(
            f"held-out loss {metrics['eval_loss_before']:.4f} -> {metrics['eval_loss']:.4f}, perplexity "
            f"{metrics['eval_perplexity_before']:.2f} -> {metrics['eval_perplexity']:.2f} after "
            f"{metrics['steps']} steps ({metrics['precision']}); model: {metrics['model_dir']}"
        )
    return metrics


if __name__ == "__main__":
    main()
