"""The base of every config section and the value ranges many fields share.

A leaf module (pydantic only): the config imports the route and CAM format registries
(pipeline/pseudo_masks/routes/, pipeline/cams/formats/), whose modules declare their own
parameter sections on this base, so they must not import pipeline.config themselves."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# Value ranges shared by many fields (a bad value is refused naming its field, before any stage runs)
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    # allow_inf_nan=False: every float field (lists and tuples of floats too) refuses inf and NaN
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
