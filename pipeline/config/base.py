"""What every config section shares: the base model and value ranges (pipeline/section.py), the error type."""
from __future__ import annotations

from pipeline.section import Fraction, NonNegative, Positive, Section  # noqa: F401 (re-exported)


class ConfigError(ValueError):
    """A config problem, naming the file and the dotted key."""


def _is_hub_tag(value: str) -> bool:
    return not _looks_like_path(value)


def _looks_like_path(value: str) -> bool:
    if "://" in value:  # hub name / URL (open-mmlab://..., https://...), not a local file
        return False
    return "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
