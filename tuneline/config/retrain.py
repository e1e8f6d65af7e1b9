"""`retrain:`: whether a run trains when its data is what the current champion was trained on."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuneline.config.base import Section

RetrainWhen = Literal["data_changed", "always"]


class RetrainConfig(Section):
    when: RetrainWhen | None = Field(
        default=None,
        description=(
            "data_changed: skip training, evaluation and registration when the data's content "
            "fingerprint equals the one recorded on the current champion; always: train on every run. "
            "Unset: data_changed for scheduled runs (a weekly job should not retrain on the same "
            "data), always for runs started by hand (asking for a run means wanting one)."
        ),
    )

    def resolved(self, *, scheduled: bool) -> RetrainWhen:
        if self.when is not None:
            return self.when
        return "data_changed" if scheduled else "always"
