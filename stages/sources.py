"""Which artifact holds the CAMs and which the pseudo masks a run uses: the pipeline's own
(export_cams, pseudo_masks) or imported ones (import_cams when export_cams.source is 'import',
import_masks when import_masks.dir is set). The inputs functions take the full config; inside
a stage, the inputs dict says which one it got."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from pipeline.config import Config


def cam_stage(cfg: Config) -> str:
    return "import_cams" if cfg.export_cams.source == "import" else "export_cams"


def mask_stage(cfg: Config) -> str:
    return "import_masks" if cfg.import_masks.dir is not None else "pseudo_masks"


def cams_dir(inputs: Mapping[str, Path]) -> Optional[Path]:
    """The CAM artifact among a stage's inputs (None: the stage got none)."""
    d = inputs.get("import_cams") or inputs.get("export_cams")
    return Path(d) if d else None


def masks_dir(inputs: Mapping[str, Path]) -> Path:
    """The folder of the trained-on pseudo masks among a stage's inputs."""
    return Path(inputs.get("import_masks") or inputs["pseudo_masks"]) / "masks"
