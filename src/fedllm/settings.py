"""The base of every config section, and the error a bad configuration raises."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class ConfigError(ValueError):
    """A configuration that cannot be run, with a message naming the key."""


NONE = "none"
"""TOML has no null: optional fields take the string "none" to mean unset."""


class Section(BaseModel):
    """Base of every config section: unknown keys and non-finite numbers (inf, nan) are
    errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _none_word(cls, value: Any, info: ValidationInfo) -> Any:
        if value == NONE and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if type(None) in get_args(annotation):
                return None
        return value


def check_client_names(key: str, named: Iterable[str], clients: Iterable[str]) -> None:
    """Refuse a per-client setting (``key``) that names clients the federation lacks.

    Raises:
        ConfigError: naming the unknown ids and listing (up to 10) valid ones.
    """
    known = sorted(clients)
    unknown = sorted(set(named) - set(known))
    if unknown:
        shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        raise ConfigError(
            f"config error: {key} names unknown client(s) {unknown}; "
            f"the federation's clients are: {shown}"
        )
