"""CAM sections: export_cams (with its caa) and import_cams."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from pipeline.config.base import Positive, Section
from pipeline.registry import FORMAT_NAMES, FORMAT_OPTIONS, FORMATS, check_not_shadowed


class CaaCfg(Section):
    """FMA-WSSS's CAA (class-aware attention-based affinity, src/tasks/aff_cam; maths in
    src/libs/seeding/aff/caller.py att_cam and tools.py att2aff / get_aff_mask / aff_cam) applied to
    every forward's CAM grid during export (pipeline/cams/caa.py). Defaults: FMA's VOC fine seed,
    configs/VOC/seg/infer/final/affx2,at_cam,attx1,·5thresh/cfg.py on configs/aff_voc/base.py. FMA's
    VOC coarse seed (.../cls/infer/final/affx2,at_score,att2affx1): box_thresh 0.4, at score; COCO
    (configs/aff_voc/coco/att1次,·6阈,aff2次,at_cam.py): box_thresh 0.6. Off by default: the SemPLeS
    authors' FMA-WSSS fork seeded raw SemPLeS CAMs in the end (README, SAM route)."""
    enabled: bool = False
    last_n_layers: int = Field(8, ge=1, description="aff_voc/base.py att2aff_cfg.last_n_layers = 8: attention "
                               "averaged over heads and these last layers")
    sinkhorn_iters: int = Field(1, ge=0, description="att2aff_cfg.method.n_iter = 1 ('attx1'; base 3)")
    power: int = Field(2, ge=1, description="aff_cfg.n_iters = 2 ('affx2'): out = A^power @ (box * x)")
    box_thresh: float = Field(0.5, ge=0, le=1, description="aff_mask_cfg.method.thresh = .5 ('·5thresh'; base "
                              "0.4): boxes around the contours of score > t * max")
    at: Literal["cam", "score"] = Field("cam", description="aff_at = 'cam': refine the raw CAM; 'score': its "
                                        "relu'd min-max (the boxes always come from the score)")


class ExportCamsCfg(Section):
    # which training stage's mask generator makes the CAMs: a registered phase that makes CAMs
    # (a TrainCfg section that makes CAMs; checked by Config), e.g. the ablation warm start (train_cam) vs L_match only
    # (match) vs full SemPLeS (refine); import: no CAM inference, the CAM artifact is import_cams'
    # (CAMs of another method)
    source: str = "refine"
    split: str = "train"
    # SemPLeS README, CAM generation: --scales 1.0 1.2 (each with its flip)
    scales: list[Positive] = Field(default_factory=lambda: [1.0, 1.2], min_length=1)
    flip: bool = True
    cam: Literal["fine", "coarse"] = "fine"
    gallery_size: int = Field(8, ge=0, description="CAM overlays of a fixed sample of images")
    caa: CaaCfg = Field(default_factory=CaaCfg, description="FMA-WSSS's CAA on each forward's CAMs (arch vit)")
    # throughput only (same CAMs within fp rounding): in THROUGHPUT, left out of
    # the artifact key, so a resumed export may change them
    batch_size: int = Field(8, ge=1,
                            description="images of one size per forward (x2 with flip); 1 = one image at a time")
    writer_threads: int = Field(8, ge=0,
                                description="threads compressing + writing CAMs to zarr; 0 = on the main thread")
    prefetch_batches: int = Field(2, ge=1, description="batches each DataLoader worker prepares ahead")


class ImportCamsCfg(*FORMAT_OPTIONS, Section):
    """CAMs made by another code base (stage import_cams, selected by export_cams.source: import);
    docs/guide/bring-your-own.md. One file per image of export_cams.split. Also the fields
    of every format's own options (FORMAT_OPTIONS, pipeline/cams/formats/: clip_es_key)."""
    dir: Optional[Path] = Field(None, description="folder of <image id> CAM files (the format's suffix)")
    format: Literal[FORMAT_NAMES] = Field(
        "weaktr_npy", description="; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()))
    class_base: int = Field(0, ge=0, description="dict / fma formats: the index of the first foreground class "
                            "(official scripts: 0)")
    class_index: Literal["label", "coco_category"] = Field(
        "label", description="label: index - class_base + 1 is the label id; coco_category: it is a COCO "
        "category id 1..90 (WeakTr/SemPLeS COCO models have 90 rows)")
    extra_classes: Literal["error", "drop"] = Field("error", description="a class not among the image's labels")
    missing_classes: Literal["error", "zero"] = Field("error", description="an image label without a CAM: "
                                                      "error, or an all-zero map")
    resize: bool = Field(False, description="CAMs of another size than the image: bilinear resize "
                         "(align_corners=False) instead of an error")
    normalize: bool = Field(False, description="min-max normalise each class map (eps 1e-8) instead of "
                            "refusing values outside [0, 1]")
    hash: Literal["stat", "full"] = Field("stat", description="what the artifact key covers of the files: "
                                          "names + sizes + mtimes (stat) or their sha256 (full: reads every byte "
                                          "whenever keys are computed)")
    gallery_size: int = Field(8, ge=0, description="CAM overlays of a fixed sample of images")


check_not_shadowed(ImportCamsCfg, FORMAT_OPTIONS)
