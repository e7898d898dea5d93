"""The training loop behind engine.train: SFT or DPO, LoRA or full, packed, checkpointed, pausable."""

from __future__ import annotations

import json
import logging
import math
import random
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import torch

from engine import fastlora
from engine.artifacts import Identity, identify, manifest, publish_dir, write_json
from engine.checkpoint import CheckpointError, is_stripped, prune, strip_state, verify_checkpoint, write_checkpoint
from engine.control import Control, Interrupted
from engine.data import DatasetError, Example, LoadReport, Pair, load_dpo, load_sft
from engine.events import (
    CheckpointEvent,
    CheckpointRef,
    EngineEvent,
    EvaluationSummary,
    Figures,
    MessageEvent,
    MetricsEvent,
    RunError,
    StartedEvent,
)
from engine.hparams import Resolved, resolve
from engine.manifest import ArtifactManifest, ResolvedSpec
from engine.metrics import MetricsCSV
from engine.models import default_device_dtype, ensure_base_model, is_built, load_tokenizer
from engine.modelsetup import is_adapter_dir, load_trainable_weights, make_trainable, save_weights
from engine.objectives import dpo_loss, micro_batches, sequence_logps, sft_forward
from engine.result import Status, TrainResult
from engine.run_eval import RunEvaluator
from engine.spec import SpecError, TrainSpec, parse_spec
from engine.tinychat import TINY_CHAT

log = logging.getLogger("engine.train")
EventSink = Callable[[EngineEvent], None]
_MAX_LISTED_LINES = 20


class RunStopped(Exception):
    """Ends a run early with a result (invalid input, failure, pause or cancel)."""

    def __init__(self, status: Status, code: str | None = None, message: str = "", invalid: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.invalid = status, code, message, invalid


def _lr_lambda(total: int, warmup: int, kind: str) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return f


class _Run:
    """One training run; methods share the model, optimizer and bookkeeping."""

    def __init__(self, spec: TrainSpec, emit: EventSink, control: Control) -> None:
        self.spec, self.emit, self.control = spec, emit, control
        self.out = Path(spec.output_dir).resolve()
        self.kind = spec.tuning.type
        self.step = 0
        self.trained_tokens = 0
        self.last_ckpt: CheckpointRef | None = None
        self.last_metrics: Figures = {}
        self.hp: Resolved | None = None
        self.ref: dict[str, torch.Tensor] = {}
        self.valid_set: list[Any] = []
        self.validation_source: Literal["file", "split"] | None = None
        self.evaluator = RunEvaluator(self)
        self.evaluation: EvaluationSummary | None = None
        self.selected_step: int | None = None

    # ----- setup -------------------------------------------------------------------------------------------
    def message(self, level: str, message: str, **extra: Any) -> None:
        """A free-text event; `code` (if given) names what it is about for clients and tests."""
        self.emit(MessageEvent.model_validate({"level": level, "message": message, **extra}))

    _message = message

    def _report(self, name: str, rep: LoadReport) -> None:
        max_len = self.spec.hyperparameters.max_seq_length
        if rep.truncated_lines:
            self._message(
                "warn",
                f"{name}: {len(rep.truncated_lines)} of {rep.n_lines} examples are longer than max_seq_length="
                f"{max_len} tokens and lost their oldest turns (system messages and the latest answers kept)",
                code="truncated",
                file=name,
                count=len(rep.truncated_lines),
                lines=rep.truncated_lines[:_MAX_LISTED_LINES],
            )
        if rep.dropped_lines:
            self._message(
                "warn",
                f"{name}: {len(rep.dropped_lines)} examples do not fit max_seq_length={max_len} tokens even with "
                f"only their last exchange and are skipped: lines {rep.dropped_lines[:_MAX_LISTED_LINES]}",
                code="too_long",
                file=name,
                count=len(rep.dropped_lines),
                lines=rep.dropped_lines[:_MAX_LISTED_LINES],
            )
        if rep.untrainable_lines:
            self._message(
                "warn",
                f"{name}: {len(rep.untrainable_lines)} examples have no trainable token (after fitting) and are "
                f"skipped: lines {rep.untrainable_lines[:_MAX_LISTED_LINES]}",
                code="no_trainable_tokens",
                file=name,
                count=len(rep.untrainable_lines),
                lines=rep.untrainable_lines[:_MAX_LISTED_LINES],
            )

    def _load(self, path: str, name: str) -> list[Any]:
        hp = self.spec.hyperparameters
        if not Path(path).is_file():
            raise RunStopped("failed", "invalid_dataset", f"{name}: the file does not exist", invalid=True)
        items: list[Any]
        try:
            if self.spec.method == "dpo":
                items, rep = load_dpo(path, self.tokenizer, max_seq_length=hp.max_seq_length)
            else:
                items, rep = load_sft(
                    path, self.tokenizer, max_seq_length=hp.max_seq_length, train_on_inputs=hp.train_on_inputs
                )
        except DatasetError as err:
            raise RunStopped("failed", "invalid_dataset", f"{name}: {err}", invalid=True) from None
        self._report(name, rep)
        return list(items)

    def _check_control(self) -> None:
        """Between set-up phases (for in-process runs, which have no signal-driven interruption)."""
        if self.control.poll() == "cancel":
            raise RunStopped("cancelled", None, "cancelled before training started")

    def prepare(self) -> None:
        """Resolve the base model, read data, resolve hyperparameters, build model and optimizer."""
        spec = self.spec
        random.seed(spec.seed)
        torch.manual_seed(spec.seed)
        self.device, self.dtype = default_device_dtype()
        if spec.base_model == TINY_CHAT and not is_built(TINY_CHAT, spec.data_dir):
            self.message(
                "info",
                "Building the tiny-chat base model (first use on this server only; a short "
                "pretraining run of a few minutes)",
                code="building_base_model",
            )
        try:
            base_path = ensure_base_model(spec.base_model, spec.data_dir)
        except (ValueError, FileNotFoundError) as err:
            reason = _public(str(err))
            raise RunStopped("failed", "invalid_base_model", f"base_model: {reason}", invalid=True) from None
        self.tokenizer = load_tokenizer(base_path)
        self._check_control()
        self.train_set = self._load(spec.training_file, "training_file")
        if spec.validation_file:
            self.valid_set, self.validation_source = self._load(spec.validation_file, "validation_file"), "file"
        elif spec.hyperparameters.validation_split is not None:
            self._split_validation(spec.hyperparameters.validation_split)
        if not self.train_set:
            raise RunStopped(
                "failed", "invalid_dataset", "training_file: no example has a trainable token", invalid=True
            )
        # A fixed, seeded order: every evaluation scores the same leading subset, base and checkpoints alike.
        random.Random(spec.seed + 1).shuffle(self.valid_set)
        self.hp = resolve(spec, len(self.train_set))
        if spec.resume_from:
            try:
                self.ckpt_sha = verify_checkpoint(spec.resume_from)
            except CheckpointError as err:
                reason = _public(str(err).replace(str(spec.resume_from), "the checkpoint"))
                raise RunStopped("failed", "invalid_checkpoint", f"resume_from: {reason}", invalid=True) from None
        if spec.init_from and not Path(spec.init_from).is_dir():
            raise RunStopped("failed", "invalid_init", "init_from: the model to continue from is gone", invalid=True)
        self.ident: Identity = identify(
            spec.base_model, base_path, self.tokenizer, spec.training_file, spec.validation_file, spec.base_model_name
        )
        self._check_control()
        self.emit(
            StartedEvent(
                total_steps=self.hp.total_steps,
                hyperparameters=self.hp.model_dump(mode="json"),
                n_examples=len(self.train_set),
                n_validation_examples=len(self.valid_set),
                validation_source=self.validation_source,
                trained_tokens_estimate=self._tokens_per_epoch() * self.hp.n_epochs,
                method=spec.method,
                tuning=self.kind,
                device=str(self.device),
            )
        )
        self._build_model(base_path)
        if spec.resume_from:
            self._restore(Path(spec.resume_from))
        elif spec.method == "dpo":
            self.ref = self._reference_logps()

    def _split_validation(self, share: float) -> None:
        """Hold out a seeded share of the training examples (at least one, never all) as validation data."""
        n = len(self.train_set)
        if n < 2:
            return
        k = min(n - 1, max(1, round(share * n)))
        order = list(range(n))
        random.Random(self.spec.seed).shuffle(order)
        held = set(order[:k])
        self.valid_set = [e for i, e in enumerate(self.train_set) if i in held]
        self.train_set = [e for i, e in enumerate(self.train_set) if i not in held]
        self.validation_source = "split"
        self.message(
            "info",
            f"validation_split: {k} of {n} training examples held out as validation data",
            code="validation_split",
            count=k,
        )

    def _tokens_per_epoch(self) -> int:
        if self.spec.method == "dpo":
            return sum(p.chosen.n_trainable + p.rejected.n_trainable for p in self.train_set)
        return sum(e.n_trainable for e in self.train_set)

    def _build_model(self, base_path: Path) -> None:
        from transformers import AutoModelForCausalLM

        spec = self.spec
        weights_path = base_path
        if self.kind == "full" and spec.init_from:
            if is_adapter_dir(spec.init_from):
                raise RunStopped(
                    "failed",
                    "invalid_init",
                    "init_from: full fine-tuning needs full weights, not an adapter",
                    invalid=True,
                )
            weights_path = Path(spec.init_from)
        base = AutoModelForCausalLM.from_pretrained(
            str(weights_path),
            use_safetensors=True,
            trust_remote_code=False,
            dtype=self.dtype,
            attn_implementation="sdpa",
        ).to(self.device)
        try:
            self.model: Any = make_trainable(base, spec.tuning, spec.init_from if self.kind == "lora" else None)
        except ValueError as err:
            raise RunStopped("failed", "invalid_init", str(err), invalid=True) from None
        if self.kind == "lora":
            # adapter_config.json names the base by its public name: the adapter loads elsewhere, never by a path.
            configs: dict[str, Any] = cast(Any, self.model).peft_config
            for cfg in configs.values():
                cfg.base_model_name_or_path = self.ident.base_model
                cfg.revision = None
            fastlora.install(self.model)
        self.model.train()
        assert self.hp is not None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hp.effective_learning_rate,
            betas=(0.9, 0.999),
            eps=1e-8,
        )
        warmup = int(self.hp.warmup_ratio * self.hp.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(self.hp.total_steps, warmup, self.hp.lr_scheduler)
        )

    # ----- DPO reference -------------------------------------------------------------------------------------
    def _policy_logps(self, pairs: Sequence[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        lp = sequence_logps(self.model, seqs, self.device)
        return lp[: len(pairs)], lp[len(pairs) :]

    def _reference_logps(self) -> dict[str, torch.Tensor]:
        """Reference log-probs of every pair, once: the base with the adapter disabled (LoRA) or the initial
        weights (full), so no second copy of the model is ever held."""
        out = {}
        was_training = self.model.training
        self.model.eval()
        for name, pairs in (("train", self.train_set), ("valid", self.valid_set)):
            cs, rs = [], []
            for group in self._pair_groups(pairs):
                with torch.no_grad():
                    if self.kind == "lora":
                        with self.model.disable_adapter():
                            c, r = self._policy_logps(group)
                    else:
                        c, r = self._policy_logps(group)
                cs.append(c.cpu())
                rs.append(r.cpu())
            out[f"{name}_chosen"] = torch.cat(cs) if cs else torch.zeros(0)
            out[f"{name}_rejected"] = torch.cat(rs) if rs else torch.zeros(0)
        self.model.train(was_training)
        return out

    def _pair_groups(self, pairs: Sequence[Pair]) -> list[list[Pair]]:
        assert self.hp is not None
        lens = [len(p.chosen.ids) + len(p.rejected.ids) for p in pairs]
        cap = self.spec.hyperparameters.max_tokens_per_micro_batch
        return [[pairs[i] for i in g] for g in micro_batches(lens, cap)]

    # ----- steps -----------------------------------------------------------------------------------------------
    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.spec.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_set), generator=g).tolist()

    def _groups(self, lengths: list[int]) -> list[list[int]]:
        if not self.hp or not self.hp.packing:
            return [[i] for i in range(len(lengths))]
        return micro_batches(lengths, self.spec.hyperparameters.max_tokens_per_micro_batch)

    def _sft_step(self, exs: list[Example]) -> tuple[float, float, int]:
        total = sum(e.n_trainable for e in exs)
        loss_sum, correct = 0.0, 0
        for g in self._groups([len(e.ids) for e in exs]):
            st = sft_forward(self.model, [exs[i] for i in g], self.device)
            torch.autograd.backward(st.loss_sum / total)
            loss_sum += float(st.loss_sum.detach())
            correct += st.n_correct
        return loss_sum / total, correct / total, total

    def _dpo_step(self, idx: list[int]) -> tuple[float, float, int]:
        assert self.hp is not None and self.hp.beta is not None
        pairs = [self.train_set[i] for i in idx]
        n = len(pairs)
        loss_sum, wins = 0.0, 0
        pos = {id(p): k for k, p in enumerate(pairs)}
        for group in self._pair_groups(pairs):
            rows = torch.tensor([idx[pos[id(p)]] for p in group])
            pc, pr = self._policy_logps(group)
            rc = self.ref["train_chosen"][rows].to(pc)
            rr = self.ref["train_rejected"][rows].to(pc)
            losses, margin = dpo_loss(pc, pr, rc, rr, self.hp.beta)
            torch.autograd.backward(losses.sum() / n)
            loss_sum += float(losses.detach().sum())
            wins += int((margin > 0).sum())
        tokens = sum(p.chosen.n_trainable + p.rejected.n_trainable for p in pairs)
        return loss_sum / n, wins / n, tokens

    def _health(self, loss: float, grad_norm: float) -> None:
        limit = self.spec.hyperparameters.grad_norm_limit
        if not math.isfinite(loss):
            raise RunStopped(
                "failed",
                "nan_loss",
                f"training loss became {loss} at step {self.step + 1}; the "
                "learning rate is probably too high (no adapter was written)",
            )
        if not math.isfinite(grad_norm) or grad_norm > limit:
            raise RunStopped(
                "failed",
                "exploding_gradients",
                f"gradient norm {grad_norm:.4g} at step "
                f"{self.step + 1} exceeds {limit:g}; lower the learning rate (no adapter was written)",
            )

    def _train_step(self, idx: list[int]) -> dict[str, Any]:
        if self.spec.method == "dpo":
            loss, acc, tokens = self._dpo_step(idx)
        else:
            loss, acc, tokens = self._sft_step([self.train_set[i] for i in idx])
        assert self.hp is not None
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.hp.max_grad_norm))
        self._health(loss, grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.trained_tokens += tokens
        return {
            "train_loss": loss,
            "train_mean_token_accuracy": acc,
            "grad_norm": grad_norm,
            "learning_rate": lr,
            "tokens": tokens,
        }

    @torch.no_grad()
    def evaluate(self, limit: int | None = None) -> tuple[float, float] | None:
        """Validation loss and mean token accuracy (DPO: loss and preference accuracy), over the first `limit`
        validation examples (all by default)."""
        if not self.valid_set:
            return None
        subset = self.valid_set[:limit] if limit else self.valid_set
        was_training = self.model.training
        self.model.eval()
        try:
            if self.spec.method == "dpo":
                assert self.hp is not None and self.hp.beta is not None
                losses, wins, k = 0.0, 0, 0
                for group in self._pair_groups(subset):
                    pc, pr = self._policy_logps(group)
                    rows = slice(k, k + len(group))
                    ls, m = dpo_loss(
                        pc,
                        pr,
                        self.ref["valid_chosen"][rows].to(pc),
                        self.ref["valid_rejected"][rows].to(pc),
                        self.hp.beta,
                    )
                    losses += float(ls.sum())
                    wins += int((m > 0).sum())
                    k += len(group)
                return losses / k, wins / k
            loss_sum, correct, total = 0.0, 0, 0
            for g in micro_batches([len(e.ids) for e in subset], self.spec.hyperparameters.max_tokens_per_micro_batch):
                st = sft_forward(self.model, [subset[i] for i in g], self.device)
                loss_sum += float(st.loss_sum)
                correct += st.n_correct
                total += st.n_tokens
            return loss_sum / max(1, total), correct / max(1, total)
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def valid_logps(self) -> tuple[list[float], list[float]]:
        """Policy log-probabilities of every validation pair's chosen and rejected completion (DPO)."""
        was_training = self.model.training
        self.model.eval()
        chosen: list[float] = []
        rejected: list[float] = []
        try:
            for group in self._pair_groups(self.valid_set):
                c, r = self._policy_logps(group)
                chosen += c.tolist()
                rejected += r.tolist()
        finally:
            self.model.train(was_training)
        return chosen, rejected

    # ----- checkpoints -------------------------------------------------------------------------------------------
    def _manifest(self) -> ArtifactManifest:
        assert self.hp is not None
        resolved = ResolvedSpec(
            method=self.spec.method,
            tuning=self.spec.tuning.model_dump(mode="json"),
            hyperparameters=self.hp.model_dump(mode="json"),
            seed=self.spec.seed,
        )
        return manifest(
            self.ident,
            kind=self.kind,
            spec=resolved,
            step=self.selected_step if self.selected_step is not None else self.step,
            trained_tokens=self.trained_tokens,
            metrics=self.last_metrics,
            evaluation=self.evaluation,
        )

    def _fingerprint(self) -> dict[str, Any]:
        assert self.hp is not None
        return {
            "method": self.spec.method,
            "tuning": self.spec.tuning.model_dump(),
            "seed": self.spec.seed,
            "total_steps": self.hp.total_steps,
            "batch_size": self.hp.batch_size,
            "training_file_sha256": self.ident.training_file_sha256,
        }

    def checkpoint(self, keep: int) -> CheckpointRef:
        """Write checkpoints/step-N atomically, announce it, prune older ones."""
        from safetensors.torch import save_file

        def fill(d: Path) -> None:
            save_weights(self.model, self.kind, d, self.tokenizer if self.kind == "full" else None)
            self._manifest().write(d)
            torch.save(self.optimizer.state_dict(), d / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), d / "scheduler.pt")
            rng = {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": random.getstate(),
            }
            torch.save(rng, d / "rng.pt")
            if self.ref:
                save_file({k: v.contiguous() for k, v in self.ref.items()}, str(d / "reference_logps.safetensors"))
            write_json(
                d / "state.json",
                {
                    "step": self.step,
                    "trained_tokens": self.trained_tokens,
                    "fingerprint": self._fingerprint(),
                    "metrics": self.last_metrics,
                    "evaluation": evaluation_state,
                },
            )

        # The evaluator learns of this checkpoint before its state is saved, so a resumed run knows the best one.
        path = self.out / "checkpoints" / f"step-{self.step}"
        with self.control.shield():  # a cancel waits for the checkpoint to be sealed and announced
            self.evaluator.note_checkpoint(self.step, str(path), self.last_metrics.get("valid_loss"))
            evaluation_state = self.evaluator.state()
            path, sha = write_checkpoint(self.out / "checkpoints", self.step, fill)
            prune(self.out / "checkpoints", keep, protect=[p for p in (path, self.evaluator.protected()) if p])
            self.last_ckpt = CheckpointRef(step=self.step, path=str(path), sha256=sha)
            # best_step: the parent's retention across runs must keep it too, wherever it lies.
            best = self.evaluator.best
            self.emit(
                CheckpointEvent(
                    step=self.step,
                    path=str(path),
                    sha256=sha,
                    metrics=dict(self.last_metrics),
                    best_step=int(best["step"]) if best else None,
                )
            )
        return self.last_ckpt

    def strip_older_checkpoints(self) -> None:
        """Once the run has succeeded, older checkpoints lose their optimizer moments (the bulk of one).

        Not while training: a run that lost its lease may write checkpoints the control plane never recorded,
        and the run that takes over resumes from the newest *recorded* one, which must still be exact. They keep
        weights, manifest and state.json, so they stay servable and selectable as best.
        """
        if self.last_ckpt is not None:
            strip_state(self.out / "checkpoints", Path(self.last_ckpt.path))

    def _restore(self, ckpt: Path) -> None:
        from safetensors.torch import load_file

        state = json.loads((ckpt / "state.json").read_text())
        if state.get("fingerprint") != self._fingerprint():
            raise RunStopped(
                "failed",
                "invalid_checkpoint",
                "resume_from: the checkpoint was written by a run "
                "with a different method, tuning, seed, batch size or training file",
                invalid=True,
            )
        load_trainable_weights(self.model, self.kind, ckpt)
        if is_stripped(ckpt):
            # Only when a newer checkpoint was sealed but not yet recorded before a crash: the run goes on from
            # these weights and data position with fresh optimizer moments, so it is no longer bit-exact.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": intended here
                for _ in range(int(state["step"])):
                    self.scheduler.step()
            self.message(
                "warn",
                f"the checkpoint of step {state['step']} holds no optimizer state (a newer one superseded it); "
                "training resumes with a fresh optimizer",
                code="resumed_without_optimizer_state",
                step=int(state["step"]),
            )
        else:
            self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
            self.scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
        rng = torch.load(ckpt / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        py = rng["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        if (ckpt / "reference_logps.safetensors").is_file():
            self.ref = load_file(str(ckpt / "reference_logps.safetensors"))
        self.step = int(state["step"])
        self.trained_tokens = int(state["trained_tokens"])
        self.last_metrics = dict(state.get("metrics") or {})
        self.evaluator.restore(state.get("evaluation"))
        self.last_ckpt = CheckpointRef(step=self.step, path=str(ckpt.resolve()), sha256=self.ckpt_sha)
        self.message("info", f"resumed from the checkpoint of step {self.step}", code="resumed", step=self.step)

    # ----- main loop ------------------------------------------------------------------------------------------
    def _due_checkpoint(self) -> bool:
        assert self.hp is not None
        if self.hp.n_checkpoints == 0:
            return False
        if self.step == self.hp.total_steps:
            return True  # the final weights as a resumable checkpoint: a run paused as it completes resumes here
        if self.hp.checkpoint_interval:
            return self.step % self.hp.checkpoint_interval == 0
        return self.step % self.hp.steps_per_epoch == 0

    def stop_if_requested(self, *, pause: bool = True) -> None:
        """At a step boundary: end the run on cancel; on pause make sure this step is checkpointed, then end it."""
        assert self.hp is not None
        req = self.control.poll()
        if req == "cancel":
            raise RunStopped("cancelled", None, f"cancelled at step {self.step}")
        if req == "pause" and pause:
            if self.last_ckpt is None or self.last_ckpt.step != self.step:
                self.checkpoint(keep=max(1, self.hp.n_checkpoints))
            raise RunStopped("paused", None, f"paused at step {self.step}")

    def loop(self) -> None:
        """Run the remaining steps, honouring pause/cancel at each step boundary."""
        assert self.hp is not None
        hp = self.hp
        csv = MetricsCSV(self.out / "metrics.csv", resume_step=self.step if self.spec.resume_from else None)
        orders: dict[int, list[int]] = {}
        if self.step == 0:  # also a run resumed from a pause that cut the base evaluation short
            try:
                with self.control.allow("cancel", "pause"):
                    self.evaluator.before_training()
            except Interrupted as interrupted:
                if interrupted.request != "pause":
                    raise
                # A pause cuts the base evaluation short: the step-0 checkpoint below records that it is still due.
            base = self.evaluator.base or {}
            if base.get("valid_loss") is not None:  # step 0 is the starting model
                csv.write(0, None, None, base["valid_loss"], base.get("valid_mean_token_accuracy"))
        if self.step < hp.total_steps:
            self._message("info", f"training steps {self.step + 1}..{hp.total_steps}", code="loop_started")
        while self.step < hp.total_steps:
            self.stop_if_requested()
            epoch, k = divmod(self.step, hp.steps_per_epoch)
            if epoch not in orders:
                orders = {epoch: self._order(epoch)}
            idx = orders[epoch][k * hp.batch_size : (k + 1) * hp.batch_size]
            with self.control.allow("cancel"):  # a long step (or the evaluation after it) ends at once on cancel
                m = self._train_step(idx)
            self.step += 1
            self.evaluator.record_train_loss(m["train_loss"])
            due = self._due_checkpoint()
            figures: Figures = {
                "step": self.step,
                "train_loss": m["train_loss"],
                "train_mean_token_accuracy": m["train_mean_token_accuracy"],
                "grad_norm": m["grad_norm"],
                "learning_rate": m["learning_rate"],
                "trained_tokens": self.trained_tokens,
            }
            valid = None
            # Every checkpoint is also an evaluation, so each one carries the valid_loss best selection compares.
            if self.step % hp.eval_interval == 0 or self.step == hp.total_steps or due:
                with self.control.allow("cancel"):
                    valid = self.evaluate(limit=self.spec.evaluation.valid_examples)
                if valid is not None:
                    figures["valid_loss"], figures["valid_mean_token_accuracy"] = valid
            csv.write(self.step, m["train_loss"], m["train_mean_token_accuracy"], *(valid or (None, None)))
            self.last_metrics = figures
            self.emit(MetricsEvent.model_validate({**figures, "total_steps": hp.total_steps}))
            stop = False
            if valid is not None:
                best_so_far = self.evaluator.is_new_best(valid[0])
                stop = self.evaluator.after_evaluation(self.step, valid[0])
                # A new best between regular checkpoints gets its own, so it can be the one published.
                due = due or (best_so_far and hp.n_checkpoints > 0 and self.evaluator.selection == "best")
            if due:
                self.checkpoint(keep=hp.n_checkpoints)
            if stop:
                break

    def finalize(self) -> None:
        """Choose the weights to publish and measure them against the starting model."""
        selected = self.evaluator.select()
        if selected != self.step and self.evaluator.best is not None:
            state = json.loads((Path(self.evaluator.best["path"]) / "state.json").read_text())
            self.last_metrics = dict(state.get("metrics") or {})
        self.selected_step = selected
        self.evaluation = self.evaluator.finish(selected)
        if self.evaluation.full_valid_loss is not None:
            self.last_metrics["full_valid_loss"] = self.evaluation.full_valid_loss
            self.last_metrics["full_valid_mean_token_accuracy"] = self.evaluation.full_valid_mean_token_accuracy

    def publish(self) -> str:
        """Write the final adapter (or model) dir with its manifest, atomically; return its path."""
        final = self.out / ("adapter" if self.kind == "lora" else "model")
        man = self._manifest()

        def fill(d: Path) -> None:
            save_weights(self.model, self.kind, d, self.tokenizer if self.kind == "full" else None)
            man.write(d)

        publish_dir(final, fill)
        man.write(self.out)
        return str(final)

    def result(self, status: Status, **kw: Any) -> TrainResult:
        """A TrainResult with this run's bookkeeping filled in."""
        csv_path = self.out / "metrics.csv"
        return TrainResult(
            status=status,
            output_dir=str(self.out),
            metrics_csv=str(csv_path) if csv_path.is_file() else None,
            trained_tokens=self.trained_tokens,
            hyperparameters=self.hp.model_dump(mode="json") if self.hp else None,
            checkpoint=self.last_ckpt,
            final_metrics=dict(self.last_metrics),
            evaluation=self.evaluation,
            selected_step=self.selected_step,
            **kw,
        )


def train(
    spec: TrainSpec | dict[str, Any],
    *,
    events: EventSink | None = None,
    control: Control | None = None,
) -> TrainResult:
    """Run one training job to completion, pause, cancel or failure; every outcome ends in a "result" event."""
    emit: EventSink = events or (lambda _e: None)
    control = control or Control()
    try:
        spec = spec if isinstance(spec, TrainSpec) else parse_spec(spec)
    except SpecError as err:
        res = TrainResult(
            status="failed",
            output_dir=str(spec.get("output_dir", "")) if isinstance(spec, dict) else "",
            error=RunError(code="invalid_spec", message=str(err)),
            invalid=True,
        )
        emit(res.to_event())
        return res
    sink = emit

    def shielded(event: EngineEvent) -> None:
        with control.shield():  # an interruption never tears an event line in half
            sink(event)

    run = _Run(spec, shielded, control)
    try:
        with control.allow("cancel"):  # loading the model or data ends at once on cancel; a pause waits for it
            run.prepare()
        run.loop()
        # After early stopping a pause must not checkpoint: a resumed run would train on past the stop.
        run.stop_if_requested(pause=run.evaluator.stopped_early_at is None)
        with control.allow("cancel"):
            run.finalize()
        run.stop_if_requested(pause=False)  # a pause now is kept by the last step's checkpoint
        res = run.result("succeeded", adapter_dir=run.publish())
        run.strip_older_checkpoints()
    except Interrupted as stop:
        status: Status = "cancelled" if stop.request == "cancel" else "paused"
        run._message("info", f"{status} at step {run.step}")
        res = run.result(status)
    except RunStopped as stop:
        error = RunError(code=stop.code, message=_public(stop.message)) if stop.status == "failed" else None
        if stop.status != "failed":
            run._message("info", stop.message)
        res = run.result(stop.status, error=error, invalid=stop.invalid)
    except Exception as exc:  # any other failure still ends the stream with a diagnosable result
        log.exception("training failed")
        message = _public(f"{type(exc).__name__}: {exc}")
        res = run.result("failed", error=RunError(code="training_error", message=message))
    emit(res.to_event())
    return res


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;:()\[\]{}<>]+")


def _public(text: str) -> str:
    """Error text tenants may read: server paths (data dir, checkpoints, model dirs) become a neutral word."""
    return _ABSOLUTE_PATH.sub("[path]", text)
