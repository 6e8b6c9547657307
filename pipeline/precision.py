"""Mixed precision by what the device supports: the autocast of a forward pass and the
gradient scaler its update needs.

AUTOCAST lists the reduced-precision dtypes each device type's autocast runs fast: CUDA
float16 (with a live GradScaler, the official recipe) and bfloat16; CPU bfloat16 only
(float16 has few CPU kernels and would need a scaler). A requested dtype the device does not
list runs in float32, so the default (AMP in float16) trains in float32 on a CPU, as before,
and a CPU run asks for bfloat16 to get autocast (train_cam.amp_dtype: bfloat16, sam.amp).
bfloat16 needs no scaler: it has float32's exponent range, so gradients do not underflow.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

AUTOCAST = {"cuda": (torch.float16, torch.bfloat16), "cpu": (torch.bfloat16,)}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    """Autocast on ``device_type`` in ``dtype`` when ``enabled`` (else float32)."""
    device_type: str
    enabled: bool
    dtype: torch.dtype = torch.float16

    @classmethod
    def of(cls, device: torch.device | str, amp: bool, dtype: str = "float16") -> "Precision":
        """``amp`` in ``dtype`` ("float16"/"bfloat16") where the device's autocast supports it."""
        device_type, want = torch.device(device).type, DTYPES[dtype]
        return cls(device_type, amp and want in AUTOCAST.get(device_type, ()), want)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    @property
    def scales(self) -> bool:
        """Whether the update needs a loss scaler: float16 autocast (its gradients underflow)."""
        return self.enabled and self.dtype == torch.float16

    def scaler(self) -> torch.amp.GradScaler:
        """A live scaler where ``scales`` (on CUDA, the only device AUTOCAST runs float16 on)."""
        return torch.amp.GradScaler("cuda", enabled=self.scales)
