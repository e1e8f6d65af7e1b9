"""Shared base for config sections: unknown keys are errors, never ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. `extra="forbid"` turns a typo into an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
