"""KTO with TRL 1.16's `KTOTrainer` (stable API: `from trl import KTOTrainer`) on labelled answers
tokenized by `tuneline.tokenize.feedback`."""

from __future__ import annotations

import logging
from typing import Any

from tuneline.config import ProjectConfig
from tuneline.errors import DataError

logger = logging.getLogger("tuneline")


def kto_config_kwargs(cfg: ProjectConfig, max_length: int) -> dict[str, Any]:
    p = cfg.train.preference
    return {
        "beta": p.beta,
        "desirable_weight": 1.0 if p.desirable_weight is None else p.desirable_weight,
        "undesirable_weight": 1.0 if p.undesirable_weight is None else p.undesirable_weight,
        "max_length": max_length,
    }


def weight_advice(n_good: int, n_bad: int, desirable: float, undesirable: float) -> str | None:
    """The KTO paper's rule (eq. 8): desirable_weight * n_desirable / (undesirable_weight *
    n_undesirable) should lie in [1, 4/3]; a reason to say so when it does not."""
    if not n_good or not n_bad:
        side = "desirable" if not n_good else "undesirable"
        return f"the train split has no {side} answers: KTO learns only from one side"
    ratio = desirable * n_good / (undesirable * n_bad)
    if 1.0 <= ratio <= 4 / 3:
        return None
    lo, hi = undesirable * n_bad / n_good, undesirable * n_bad * 4 / 3 / n_good
    return (
        f"{n_good} desirable vs {n_bad} undesirable answers: desirable_weight*n_desirable / "
        f"(undesirable_weight*n_undesirable) = {ratio:.2f}, outside [1, 1.33]; set "
        f"train.preference.desirable_weight in [{lo:.2f}, {hi:.2f}]"
    )


def kto_trainer(
    cfg: ProjectConfig,
    tokenizer: Any,
    data: Any,
    built: Any,
    kwargs: dict[str, Any],
    callbacks: list[Any],
    probed_step: type,
) -> Any:
    from trl import KTOConfig, KTOTrainer

    from tuneline.tokenize import preference_tokenize_config
    from tuneline.tokenize.feedback import PretokenizedFeedback, feedback_dataset, tokenize_feedback_split

    tok_cfg = preference_tokenize_config(cfg)
    train_rows = tokenize_feedback_split(data.splits["train"], tokenizer, tok_cfg)
    if len(train_rows) < cfg.train.batch_size:
        raise DataError(
            f"kto: the train split has {len(train_rows)} labelled answer(s), fewer than train.batch_size "
            f"{cfg.train.batch_size}; KTO's KL estimate needs full batches of other answers"
        )
    val = data.splits.get("validation") or []
    eval_ds = feedback_dataset(tokenize_feedback_split(val, tokenizer, tok_cfg)) if val else None
    kto_kwargs = kto_config_kwargs(cfg, tok_cfg.max_length)
    advice = weight_advice(
        train_rows.stats["desirable"],
        train_rows.stats["undesirable"],
        kto_kwargs["desirable_weight"],
        kto_kwargs["undesirable_weight"],
    )
    if advice:
        logger.warning("kto: %s", advice)
    args = KTOConfig(**kwargs, **kto_kwargs)

    class Trainer(probed_step, PretokenizedFeedback, KTOTrainer):  # type: ignore[valid-type,misc]
        pass

    return Trainer(
        model=built.model,
        ref_model=built.ref_model,
        args=args,
        train_dataset=feedback_dataset(train_rows),
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=built.peft_config,
    )
