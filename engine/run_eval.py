"""The evaluation side of one training run: base figures, overfitting watch, best checkpoint, final summary.

Its state travels in each checkpoint's state.json, so a resumed run reports the same base figures and
keeps watching the same validation history.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.chat import stop_token_ids
from engine.evaluation import (
    ForgettingLimits,
    GenerationSample,
    OverfitWatch,
    forgetting_warning,
    generation_sample,
    preference_scores,
    score_generation,
)
from engine.events import BaseEvaluationEvent, EvaluationSummary, FinalEvaluationEvent, MessageEvent
from engine.modelsetup import load_trainable_weights
from engine.probes import ProbeResult, cached_probes, run_probes
from engine.tinychat import TINY_CHAT

if TYPE_CHECKING:
    from engine.trainer import _Run


def _pair(base: Any, tuned: Any) -> dict[str, Any] | None:
    if base is None and tuned is None:
        return None
    return {"base": base, "tuned": tuned}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


class RunEvaluator:
    """Measures the model before its first step and after its last, and picks the checkpoint to publish."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.cfg = run.spec.evaluation
        hp = run.spec.hyperparameters
        # Best selection publishes a checkpoint, so without any kept checkpoint it can only be the last step.
        self.selection = hp.checkpoint_selection if hp.n_checkpoints > 0 else "last"
        self.base: dict[str, Any] | None = None
        self.base_probes: ProbeResult | None = None
        self.best: dict[str, Any] | None = None  # {"step", "valid_loss", "path"} of the best checkpoint
        self.warn_watch = OverfitWatch(self.cfg.overfitting_patience)
        self.stop_watch = OverfitWatch(hp.early_stopping_patience) if hp.early_stopping_patience else None
        self.overfit_warned = False
        self.warnings: list[dict[str, Any]] = []
        self.train_losses: list[float] = []  # training losses since the last evaluation
        self.stopped_early_at: int | None = None
        self.seconds = 0.0
        self._sample: GenerationSample | None = None

    # ----- state across resume ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "base_probes": None
            if self.base_probes is None
            else {"text_loss": self.base_probes.text_loss, "skills": self.base_probes.skills},
            "best": self.best,
            "warn_watch": self.warn_watch.state(),
            "stop_watch": self.stop_watch.state() if self.stop_watch else None,
            "overfit_warned": self.overfit_warned,
            "warnings": self.warnings,
            "train_losses": self.train_losses,
            "seconds": self.seconds,
        }

    def restore(self, saved: dict[str, Any] | None) -> None:
        if not saved:
            return
        self.base = saved.get("base")
        probes = saved.get("base_probes")
        self.base_probes = ProbeResult(probes["text_loss"], probes.get("skills")) if probes else None
        self.best = saved.get("best")
        self.warn_watch.restore(saved.get("warn_watch") or [])
        if self.stop_watch is not None:
            self.stop_watch.restore(saved.get("stop_watch") or [])
        self.overfit_warned = bool(saved.get("overfit_warned"))
        self.warnings = list(saved.get("warnings") or [])
        self.train_losses = [float(x) for x in saved.get("train_losses") or []]
        self.seconds = float(saved.get("seconds") or 0.0)

    # ----- measurements -----------------------------------------------------------------------------------
    @property
    def has_validation(self) -> bool:
        return bool(self.run.valid_set)

    def _generation(self) -> dict[str, Any] | None:
        run = self.run
        if run.spec.method == "dpo" or not self.has_validation or self.cfg.generation_examples == 0:
            return None
        stops = stop_token_ids(run.tokenizer)
        if self._sample is None:
            self._sample = generation_sample(
                run.valid_set, run.tokenizer, stops, self.cfg.generation_examples, run.spec.seed
            )
        was_training = run.model.training
        try:
            return score_generation(
                run.model,
                run.tokenizer,
                self._sample,
                max_tokens=self.cfg.generation_max_tokens,
                max_seconds=self.cfg.generation_max_seconds,
                stop_ids=stops,
            )
        finally:
            run.model.train(was_training)

    def _preference(self, *, base: bool) -> dict[str, float] | None:
        run = self.run
        if run.spec.method != "dpo" or not self.has_validation or run.hp is None or run.hp.beta is None:
            return None
        ref_c, ref_r = run.ref["valid_chosen"].tolist(), run.ref["valid_rejected"].tolist()
        if base:
            return preference_scores(ref_c, ref_r, ref_c, ref_r, run.hp.beta)
        chosen, rejected = run.valid_logps()
        return preference_scores(chosen, rejected, ref_c, ref_r, run.hp.beta)

    def _probes(self, *, base: bool = False) -> ProbeResult | None:
        run = self.run
        if self.cfg.probe_tokens == 0:
            return None
        with_skills = run.spec.base_model == TINY_CHAT and self.cfg.probe_per_skill > 0
        per_skill, tokens = self.cfg.probe_per_skill, self.cfg.probe_tokens
        if base and not run.spec.init_from:  # the untouched base model: the same figures for every job on it
            return cached_probes(
                run.model,
                run.tokenizer,
                run.device,
                data_dir=run.spec.data_dir,
                base_key=f"{run.ident.base_sha256}-{run.dtype}",
                with_skills=with_skills,
                per_skill=per_skill,
                max_tokens=tokens,
            )
        return run_probes(
            run.model, run.tokenizer, run.device, with_skills=with_skills, per_skill=per_skill, max_tokens=tokens
        )

    # ----- hooks the run calls ------------------------------------------------------------------------------
    def before_training(self) -> None:
        """Measure the starting model (the base, or the model a continued job starts from)."""
        if not self.cfg.enabled or self.base is not None:
            return
        started = time.perf_counter()
        run = self.run
        # Said before it starts: on a large validation set this is the longest quiet phase before step 1.
        run.message("info", "measuring the starting model before training", code="base_evaluation_started")
        valid = run.evaluate(limit=self.cfg.valid_examples)
        self.base_probes = self._probes(base=True)
        self.base = {
            "valid_loss": _round(valid[0]) if valid else None,
            "valid_mean_token_accuracy": _round(valid[1]) if valid else None,
            "generation": self._generation(),
            "preference": self._preference(base=True),
            "probes": self.base_probes.as_dict() if self.base_probes else None,
        }
        self.seconds += time.perf_counter() - started
        run.emit(BaseEvaluationEvent.model_validate({"step": 0, **self.base}))

    def record_train_loss(self, loss: float) -> None:
        self.train_losses.append(loss)

    def after_evaluation(self, step: int, valid_loss: float) -> bool:
        """Bookkeeping after a validation pass; True when early stopping says to stop now."""
        train = sum(self.train_losses) / len(self.train_losses) if self.train_losses else float("inf")
        self.train_losses = []
        began = self.warn_watch.add(step, valid_loss, train)
        if began is not None and not self.overfit_warned:
            self.overfit_warned = True
            warning = {
                "code": "overfitting",
                "message": f"Validation loss has risen for {self.warn_watch.patience} evaluations in a row since "
                f"step {began} while training loss kept falling: the model is memorising the training "
                "examples. Consider fewer epochs, more data, or early_stopping_patience.",
                "step": began,
            }
            self.warnings.append(warning)
            self.run.emit(MessageEvent.model_validate({"level": "warn", **warning}))
        if self.stop_watch is not None:
            stop_began = self.stop_watch.add(step, valid_loss, train)
            if stop_began is not None:
                self.stopped_early_at = step
                self.run.message(
                    "info",
                    f"Early stopping at step {step}: validation loss has risen for "
                    f"{self.stop_watch.patience} evaluation(s) in a row since step {stop_began}.",
                    code="early_stopping",
                    step=stop_began,
                )
                return True
        return False

    def is_new_best(self, valid_loss: float) -> bool:
        return self.best is None or valid_loss < float(self.best["valid_loss"])

    def note_checkpoint(self, step: int, path: str, valid_loss: float | None) -> None:
        if valid_loss is not None and self.is_new_best(valid_loss):
            self.best = {"step": step, "valid_loss": valid_loss, "path": path}

    def protected(self) -> Path | None:
        """The best checkpoint, which pruning must keep."""
        return Path(self.best["path"]) if self.best else None

    def select(self) -> int:
        """Load the weights to publish; returns their step."""
        run = self.run
        best = self.best
        if self.selection != "best" or best is None or int(best["step"]) == run.step:
            return run.step
        if not Path(best["path"]).is_dir():
            return run.step
        load_trainable_weights(run.model, run.kind, Path(best["path"]))
        run.message(
            "info",
            f"Publishing the checkpoint of step {best['step']}, whose validation loss "
            f"{best['valid_loss']:.4f} is the lowest of the run (checkpoint_selection=best).",
            code="checkpoint_selected",
            step=int(best["step"]),
        )
        return int(best["step"])

    def finish(self, selected_step: int) -> EvaluationSummary:
        """Measure the model to publish against the base; emit and return the summary."""
        started = time.perf_counter()
        run = self.run
        base = self.base or {}
        sampled = run.evaluate(limit=self.cfg.valid_examples) if self.cfg.enabled else None
        full = run.evaluate()
        tuned_probes = self._probes() if self.cfg.enabled else None
        if self.base_probes is not None and tuned_probes is not None:
            limits = ForgettingLimits(self.cfg.forgetting_loss_increase, self.cfg.forgetting_skill_drop)
            warning = forgetting_warning(self.base_probes, tuned_probes, limits)
            if warning is not None:
                self.warnings.append(warning)
                run.emit(
                    MessageEvent.model_validate(
                        {
                            "level": "warn",
                            **warning,
                            "base": self.base_probes.as_dict(),
                            "tuned": tuned_probes.as_dict(),
                        }
                    )
                )
        generation = self._generation() if self.cfg.enabled else None
        base_gen = base.get("generation")
        preference = self._preference(base=False) if self.cfg.enabled else None
        base_pref = base.get("preference")
        self.seconds += time.perf_counter() - started
        summary: dict[str, Any] = {
            "selected_step": selected_step,
            "last_step": run.step,
            "checkpoint_selection": self.selection if self.has_validation else "last",
            "stopped_early_at": self.stopped_early_at,
            "valid_loss": _pair(base.get("valid_loss"), _round(sampled[0]) if sampled else None),
            "valid_mean_token_accuracy": _pair(
                base.get("valid_mean_token_accuracy"), _round(sampled[1]) if sampled else None
            ),
            "full_valid_loss": _round(full[0]) if full else None,
            "full_valid_mean_token_accuracy": _round(full[1]) if full else None,
            "generation": None
            if not (base_gen or generation)
            else {
                "metric": "token_f1",
                "base": (base_gen or {}).get("token_f1"),
                "tuned": (generation or {}).get("token_f1"),
                "exact_match": _pair((base_gen or {}).get("exact_match"), (generation or {}).get("exact_match")),
                "n": (generation or base_gen or {}).get("n", 0),
                "examples": (generation or {}).get("examples", []),
            },
            "preference": None
            if not (base_pref or preference)
            else {
                "accuracy": _pair((base_pref or {}).get("accuracy"), (preference or {}).get("accuracy")),
                "reward_margin": _pair((base_pref or {}).get("reward_margin"), (preference or {}).get("reward_margin")),
            },
            "forgetting": None
            if self.base_probes is None or tuned_probes is None
            else {
                "metric": "general_text_loss",
                "base": _round(self.base_probes.text_loss),
                "tuned": _round(tuned_probes.text_loss),
                "skills": _pair(
                    self.base_probes.as_dict().get("skills_mean"), tuned_probes.as_dict().get("skills_mean")
                ),
                "skills_by_name": _pair(self.base_probes.skills, tuned_probes.skills),
            },
            "warnings": [{"code": w["code"], "message": w["message"]} for w in self.warnings],
            "seconds": round(self.seconds, 2),
        }
        summary["helped"] = _helped(summary)
        typed = EvaluationSummary.model_validate(summary)
        run.emit(FinalEvaluationEvent(step=selected_step, evaluation=typed))
        return typed


def _helped(summary: dict[str, Any]) -> bool | None:
    """True when the published model beats the base on validation loss (or, without it, on generation)."""
    loss = summary.get("valid_loss") or {}
    if loss.get("base") is not None and loss.get("tuned") is not None:
        return bool(loss["tuned"] < loss["base"])
    gen = summary.get("generation") or {}
    if gen.get("base") is not None and gen.get("tuned") is not None:
        return bool(gen["tuned"] > gen["base"])
    return None
