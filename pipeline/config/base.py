"""What every config section shares: the base model, the error type, common value ranges."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# Value ranges shared by many fields (a bad value is refused naming its field, before any stage runs)
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ConfigError(ValueError):
    """A config problem, naming the file and the dotted key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _is_hub_tag(value: str) -> bool:
    return not _looks_like_path(value)


def _looks_like_path(value: str) -> bool:
    if "://" in value:  # hub name / URL (open-mmlab://..., https://...), not a local file
        return False
    return "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
