"""Layered YAML configs (``_base_`` inheritance) validated by pydantic.

The field defaults here are the method's official values (VOC where they
differ per dataset), each with its source; YAML files set only what differs
per dataset or run (tests/test_config_defaults.py keeps it so).

A config file may name ``_base_: path`` or a list of paths (relative to the
file). Bases are merged first, in order; the child overrides only the keys it
names (dicts merge recursively, anything else is replaced). Every error names
the file that set the offending key.

Relative data/checkpoint paths are resolved against the current working
directory (run ``wsss`` from the project root, as mmseg's tools do).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.routes import NAMES as ROUTE_NAMES

# Value ranges shared by many fields (a bad value is refused naming its field, before any stage runs)
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ConfigError(ValueError):
    """A config problem, naming the file and the dotted key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ----------------------------------------------------------------- sections
# Fields that change how fast a stage runs (or where), never what it computes: no
# artifact key covers them, and every stage's config view may read them.
THROUGHPUT = ("run.work_dir", "run.device", "run.num_workers", "run.shard_size", "run.processes",
              "run.task_runner", "run.dask_address", "run.dask_workers", "run.nproc_per_node",
              "run.dist_backend", "run.gpus", "run.lock_lease_s",
              "export_cams.batch_size", "export_cams.writer_threads", "export_cams.prefetch_batches",
              "sam.points_per_batch", "sam.amp", "sam.images_in_flight",
              "data.fetch")  # prepare_data fetches a missing tree first; the tree, not the fetch, makes the key


class RunCfg(Section):
    name: str = "wsss"
    work_dir: Path = Path("runs")
    seed: int = Field(0, ge=0, lt=2 ** 32, description="numpy seeds must be in [0, 2**32)")
    seeds: Optional[list[Annotated[int, Field(ge=0, lt=2 ** 32)]]] = Field(
        None, min_length=1, description="`wsss run` runs the DAG once per seed (run.seed) and writes the spread "
        "report; None = run.seed only. Part of no artifact key")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(8, ge=0, description="DataLoader workers")
    shard_size: int = Field(256, ge=1, description="images per shard of per-image stages")
    processes: int = Field(0, ge=0, description="worker processes of per-image CPU stages; 0 = all cores")
    task_runner: Literal["thread", "dask"] = "thread"
    dask_address: Optional[str] = Field(None, description="scheduler address; None = LocalCluster")
    dask_workers: int = Field(2, ge=1)
    nproc_per_node: int = Field(1, ge=1, description="torchrun processes for training stages")
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    gpus: list[Annotated[int, Field(ge=0)]] = Field(
        [0], min_length=1, description="devices for the GPU stages of a flow run: with one, they queue on it "
        "(independent CPU stages still run beside them); with several, stages whose inputs are done run at "
        "once, each in its own process pinned to its device (CUDA_VISIBLE_DEVICES), queued when none is free. "
        "On a CPU run: how many GPU stages run at once. Part of no artifact key")
    lock_lease_s: float = Field(180.0, gt=0, description="seconds without a heartbeat after which another "
                                "process takes over an artifact's lock (holder's machine lost); all runs "
                                "sharing a store must agree")


class SplitCfg(Section):
    """One split. VOC: ``list`` is an ImageSets file; COCO: ``images`` + ``annotations``;
    folder: ``labels`` (CSV ``image,labels`` or JSON lines), ``images`` (default: data.root),
    optional ``masks`` (ground-truth PNGs ``<id>.png`` for evaluation)."""
    list: Optional[str] = None
    images: Optional[str] = None
    annotations: Optional[str] = None
    masks: Optional[str] = None
    labels: Optional[str] = None


class DataCfg(Section):
    @property
    def all_splits(self) -> list[str]:
        return [s for s in dict.fromkeys([self.train_split, self.val_split, self.eval_split or self.train_split])
                if s is not None]

    dataset: Literal["voc", "coco", "folder"]
    root: Path
    classes: Optional[str] = Field(None, description="folder: class list file under root (.txt: one name a "
                                   "line; .csv: columns name[,prompt][,color]); background is added as 0")
    train_split: str = "train"
    val_split: Optional[str] = Field("val", description="None (folder only): train_segmentation skips validation")
    eval_split: Optional[str] = Field(None, description="split with GT on which seeds/pseudo masks are scored "
                                      "(VOC: train, 1,464 images, while CAMs cover train_aug); None = train_split")
    splits: dict[str, SplitCfg] = Field(default_factory=dict)
    max_images: Optional[int] = Field(None, ge=1, description="cap per split (debugging)")
    coco_render: Literal["official", "largest_first"] = Field(
        "official", description="COCO GT masks from instances. official: as SemPLeS/WeakTr data/parse_coco.py "
        "(annotation order, the first instance to cover a pixel keeps it, crowd regions get their category); "
        "largest_first: larger instances first so small ones stay on top, crowd regions -> 255")
    # in THROUGHPUT, so part of no artifact key: fetched or not, the data are the same
    fetch: bool = Field(False, description="prepare_data first runs `wsss fetch` for this data set "
                        "(voc/coco) into data.root when it is not there yet")

    @model_validator(mode="after")
    def _check_fetch(self):
        if self.fetch and self.dataset == "folder":
            raise ValueError("fetch: only the published data sets (voc, coco) can be fetched")
        return self


class MaskGeneratorCfg(Section):
    """WeakTr/SemPLeS S: DeiT-S with one class token per class (models.py, models123.py)."""
    arch: Literal["vit", "cnn"] = "vit"
    backbone: str = "deit_small_patch16_224"
    pretrained: Union[bool, str] = True  # True = timm's ImageNet weights, str = local file
    img_size: int = Field(224, ge=1)
    drop_path_rate: float = Field(0.1, ge=0, lt=1)  # main*.py --drop-path default
    # Attention fusion (AAF). features: heads weighted from their pooled attention features
    # (SemPLeS AAF.py, WeakTr AAF.py since V2; every phase and the official warm start); maps: from
    # their pooled attention maps (WeakTr V1, train_cam.recipe weaktr_v1). The stages set `fusion`.
    # reduction/pool are the official commands' --reduction/--pool-type.
    fusion: Literal["maps", "features"] = "maps"
    fusion_reduction: float = Field(8, gt=0, description="head FFN reduction (VOC 8, COCO 4)")
    fusion_pool: Literal["max", "avg"] = Field("max", description="pooling of maps/features (VOC max, COCO avg)")
    feat_reduction: int = Field(8, ge=1, description="feature FFN reduction of the features fusion (official 8)")
    final_norm: bool = Field(False, description="LayerNorm after the last block (official: none, "
                             "forward_features returns the last block's output)")
    input_remainder: Literal["crop", "pad"] = Field(
        "crop", description="an input side that is no multiple of the patch size: crop the remainder, as the "
                            "official stride-16 patch embedding does (the CAM grid then spans the whole image), "
                            "or pad it")


class ClipCfg(Section):
    # engine*.py: clip.load('ViT-B/32'): OpenAI's weights, trained with QuickGELU
    model: str = "ViT-B-32-quickgelu"
    pretrained: Optional[str] = "openai"  # hub tag or local checkpoint path (then set quick_gelu)
    allow_random_init: bool = False
    factory: Optional[str] = Field(None, description="'module:function' returning a VL model")
    template: str = "a photo of {}."
    image_size: int = Field(224, ge=1)
    # OpenAI's CLIP weights were trained with QuickGELU; open_clip builds plain GELU for
    # 'ViT-B-32' even with pretrained='openai'. None = from the model name ('-quickgelu').
    quick_gelu: Optional[bool] = None
    class_names: Literal["official", "label"] = Field(
        "official", description="text prompt names: the official code's list (clip_utils.py category_dict, "
                                "VOC 'player' for person) or the label names")
    input_norm: Literal["official", "clip"] = Field(
        "official", description="official: masked S inputs (ImageNet-normalised) go to CLIP as they are; "
                                "clip: renormalised with CLIP's own mean/std")

    @model_validator(mode="after")
    def _check_activation(self):
        named_quick = self.model.endswith("-quickgelu")
        if self.factory is None and self.pretrained == "openai" and not named_quick and not self.quick_gelu:
            raise ValueError(f"clip.model: OpenAI weights need QuickGELU; use '{self.model}-quickgelu' "
                             "or set clip.quick_gelu: true")
        if (self.factory is None and isinstance(self.pretrained, str) and not _is_hub_tag(self.pretrained)
                and not named_quick and self.quick_gelu is None):
            raise ValueError("clip.quick_gelu: say whether the local checkpoint was trained with QuickGELU "
                             "(true for OpenAI's weights) or GELU (false)")
        return self


class TrainCfg(Section):
    """A training phase; defaults: the SemPLeS phases' (kuongan/SemPLeS README.md VOC
    commands, main1-3.py defaults: 60 epochs, batch 64, weight decay 0.03, no warmup, min lr 0)."""
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch (all processes)")
    # The official scripts' --lr (VOC phases 1 and 3: 5.12e-4 -> 6.4e-5 effective at batch 64); the
    # effective lr is lr x global batch / lr_scale_batch (main*.py: linear_scaled_lr = lr * batch_size
    # * world_size / 512). null = lr as is.
    lr: Positive = 5.12e-4
    lr_scale_batch: Optional[int] = Field(512, ge=1)
    weight_decay: NonNegative = 0.03
    warmup_epochs: int = Field(0, ge=0)
    warmup_lr: NonNegative = 1e-6
    min_lr: NonNegative = 0.0
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = Field("float16", description="official: float16 autocast + GradScaler")
    crop_size: int = Field(224, ge=1)
    # weaktr: timm's ImageNet train transform as WeakTr's datasets.py builds it (bicubic random
    # resized crop, flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25); crop_flip: crop + flip
    augment: Literal["weaktr", "crop_flip"] = "weaktr"
    gallery_size: int = Field(8, ge=0)
    # checkpoint selection (README "Checkpoint selection and seed evaluation")
    select: Literal["last", "gt_miou"] = Field(
        "last", description="last: the last epoch (no pixel labels); gt_miou: the epoch with the best seed mIoU "
        "on seed_eval_split (the official protocol; uses ground truth)")
    seed_eval_every: int = Field(0, ge=0, description="score the seeds against GT every N epochs and at the "
                                 "last one (the seed-mIoU curve); 0 = never")
    seed_eval_split: Optional[str] = Field(None, description="split with GT the seeds are scored on; "
                                           "None = data.eval_split (or train_split)")
    seed_eval_ids: Optional[Path] = Field(None, description="file of image ids (one a line) restricting "
                                          "seed_eval_split, e.g. WeakTr's coco/train_1250_id.txt (user supplied)")
    seed_eval_max_images: Optional[int] = Field(None, ge=1, description="first N images only (debugging)")

    @model_validator(mode="after")
    def _check_select(self):
        if self.select == "gt_miou" and self.seed_eval_every < 1:
            raise ValueError("select 'gt_miou' needs seed_eval_every >= 1 (the epochs it chooses from)")
        return self

    def effective_lr(self) -> float:
        return self.lr * self.batch_size / self.lr_scale_batch if self.lr_scale_batch else self.lr


class TrainCamCfg(TrainCfg):
    # WeakTr main.py / docs/Training.md (VOC): --lr 6e-4, --weight-decay 0.03, warmup 5, min lr 1e-5
    lr: Positive = 6e-4
    warmup_epochs: int = Field(5, ge=0)
    min_lr: NonNegative = 1e-5
    init_checkpoint: Optional[str] = Field(
        None, description="WeakTr's released checkpoint_best_mIoU.pth (or any official-layout state dict): "
                          "imported and verified instead of training")
    # official: SemPLeS main.py / WeakTr main.py at HEAD (WeakTr V2+): the feature fusion the phases
    # use (attn_head_ffn + attn_feat_ffn), timm create_optimizer(args, model.parameters()): one param
    # group, every parameter decayed. weaktr_v1: WeakTr V1 (2023-03): the map fusion (fc) and
    # create_optimizer(args, model): no decay for biases, norms, class tokens and positions.
    recipe: Literal["official", "weaktr_v1"] = Field(
        "official", description="warm-start recipe: official (feature fusion, uniform weight decay) or "
                                "weaktr_v1 (WeakTr V1: map fusion, filtered weight decay)")


class MatchCfg(TrainCfg):
    lambda_b: NonNegative = 2.4  # README main1.py --hypers 2.4 (VOC)
    mask_eps: Positive = 0.1  # engine1.py min-max eps
    # head: as models123.py, patch tokens and attention detached, only the CAM head and the
    # attention fusion learn; all: the whole mask generator learns (a deviation)
    trainable: Literal["head", "all"] = "head"


class LearnPromptsCfg(TrainCfg):
    # README main2.py VOC command: --batch-size 128 --lr 0.1 (-> 0.025 effective)
    batch_size: int = Field(128, ge=1, description="global batch (all processes)")
    lr: Positive = 0.1
    augment: Literal["weaktr", "crop_flip"] = "crop_flip"
    lambda_t: NonNegative = 0.02  # --hypers 0.02 (VOC)
    n_prompts: int = Field(30, ge=1, description="--btp_length 30")
    prompt_init: Literal["uniform", "normal"] = Field(
        "uniform", description="uniform: torch.rand as main2.py; normal: N(0, 0.02)")
    mask_eps: Positive = 1e-4  # engine2.py min-max eps
    n_interpret_images: int = Field(4, ge=0)
    vocab_topk: int = Field(5, ge=1)


class RefineCfg(TrainCfg):
    lambda_b: NonNegative = 2.4  # README main3.py --hypers 2.4 0.05 (VOC)
    lambda_refine: NonNegative = 0.05
    mask_eps: Positive = 0.1  # engine3.py min-max eps
    # --resume of the WeakTr checkpoint: S restarts from the warm start
    init_from: Literal["train_cam", "match"] = "train_cam"
    trainable: Literal["head", "all"] = "head"


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
    # which training stage's mask generator makes the CAMs: the ablation warm
    # start (train_cam) vs L_match only (match) vs full SemPLeS (refine); import: no
    # CAM inference, the CAM artifact is import_cams' (CAMs of another method)
    source: Literal["train_cam", "match", "refine", "import"] = "refine"
    split: str = "train"
    # README CAM generation: --scales 1.0 1.2 (each with its flip)
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


class ImportCamsCfg(Section):
    """CAMs made by another code base (stage import_cams, selected by export_cams.source: import);
    README "Bring your own CAMs / masks". One file per image of export_cams.split."""
    dir: Optional[Path] = Field(None, description="folder of <image id>.npy / .npz CAM files")
    format: Literal["weaktr_npy", "clip_es_npy", "stacked_npz", "fma_npz"] = Field(
        "weaktr_npy", description="weaktr_npy: np.save of {class index: (H, W)} (WeakTr/SemPLeS/MCTformer); "
        "clip_es_npy: {keys, attn_highres} (CLIP-ES); stacked_npz: cams (C, H, W) + classes (label ids); "
        "fma_npz: cam + fg_cls (FMA-WSSS)")
    class_base: int = Field(0, ge=0, description="dict / fma formats: the index of the first foreground class "
                            "(official scripts: 0)")
    class_index: Literal["label", "coco_category"] = Field(
        "label", description="label: index - class_base + 1 is the label id; coco_category: it is a COCO "
        "category id 1..90 (WeakTr/SemPLeS COCO models have 90 rows)")
    clip_es_key: str = Field("attn_highres", description="clip_es_npy: the dict entry holding the CAMs "
                             "(CLIP-ES eval_cam.py --cam_type)")
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


class ImportMasksCfg(Section):
    """Pseudo masks made by another code base (stage import_masks): with ``dir`` set,
    train_segmentation trains on them and evaluate scores them instead of pseudo_masks' route."""
    dir: Optional[Path] = Field(None, description="folder of <image id>.png label maps of data.train_split "
                                "(palette or greyscale class ids, 255 = ignore); None = masks of pseudo_masks")
    hash: Literal["stat", "full"] = Field("stat", description="the key covers names + sizes + mtimes (stat) "
                                          "or the sha256 (full) of the PNGs")
    gallery_size: int = Field(8, ge=0, description="image | mask pictures of a fixed sample")


class SamCfg(Section):
    """SAM automatic masks with FMA-WSSS's changes (pipeline/sam/generator.py). Official values:
    FMA-WSSS configs/sam_auto_seg/patterns/mask_gen_ini.py, pattern 'l2_nmsf_s1_rsw3' (the one
    configs/VOC/sams/cfg.py selects), on SAM ViT-H."""
    model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"  # FMA: sam_vit_h_4b8939.pth
    checkpoint: Optional[str] = Field(None, description="local file or URL of the SAM weights; None = Meta's "
                                      "official URL for model_type (downloaded into the torch hub cache)")
    split: str = Field("train", description="the split whose masks are made; must equal export_cams.split")
    tiny: bool = Field(False, description="tiny random-initialised SAM (segment-anything's classes): tests, smoke")
    points_per_side: int = Field(32, ge=1)          # mask_gen_ini.py points_per_side = 32
    pred_iou_thresh: Fraction = 0.86                # pred_iou_thresh = 0.86
    stability_score_thresh: Fraction = 0.92         # stability_score_thresh = 0.92
    stability_score_offset: NonNegative = 1.0       # stability_score_offset = 1.0
    box_nms_thresh: Fraction = 0.7                  # box_nms_thresh = 0.7
    crop_n_layers: int = Field(1, ge=0)             # crop_n_layers = 1
    crop_nms_thresh: Fraction = 0.7                 # crop_nms_thresh = 0.7
    crop_overlap_ratio: Annotated[float, Field(ge=0, lt=1)] = 512 / 1500  # crop_overlap_ratio = 512 / 1500
    crop_n_points_downscale_factor: int = Field(2, ge=1)  # crop_n_points_downscale_factor = 2
    min_mask_region_area: int = Field(100, ge=0)    # min_mask_region_area = 100 (needs opencv)
    iou_thresh_offsets: tuple[float, float, float] = (0.0, 0.0, 0.1)  # score_thresh_offset (sub-part, part, whole)
    nms_offsets: tuple[float, float, float] = (0.0, 0.0, 1.0)  # score_nms_offset: whole masks win the NMS
    # stability_score_bias (sam_auto.py SamAuto.__init__ / _process_batch): added per level to the stability
    # score before its threshold; mask_gen_ini.py l2_nmsf_s1_rsw3 = (0.0, 0.0, 0.0)
    stability_score_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rsw_thresh: Optional[float] = Field(0.3, ge=0, le=1, description="rock_sand_water_thresh = 0.3; None = no filter")
    gallery_size: int = Field(8, ge=0, description="mask overlays of a fixed sample of images")
    # throughput only (the same masks): in THROUGHPUT, part of no artifact key
    points_per_batch: int = Field(64, ge=1, description="point prompts per mask-decoder call")
    amp: bool = Field(False, description="bfloat16 autocast on CUDA (off: unmeasured whether masks "
                      "stay within SAM's own tolerance)")
    images_in_flight: int = Field(2, ge=1, description="images read ahead (JPEG decode) and files written "
                                  "behind (JSON + rename) while SAM works on the current one")


class CrfCfg(Section):
    """pydensecrf parameters; defaults = WeakTr's VOC CAM-CRF (tool/imutils.py)."""
    iterations: int = Field(10, ge=1)
    gauss_sxy: Positive = 4
    gauss_compat: NonNegative = 3
    bilateral_sxy: Positive = 83
    bilateral_srgb: Positive = 5
    bilateral_compat: NonNegative = 3
    gt_prob: float = Field(0.7, gt=0, lt=1, description="pydensecrf unary_from_labels: confidence in the seed labels")


class AffinityCfg(Section):
    """Random walk over the mask generator's patch attention (pipeline/pseudo_masks/affinity.py)."""
    beta: float = Field(8.0, gt=0, description="affinity = symmetrised attention ** beta")
    iterations: int = Field(6, ge=1, description="random-walk steps on the patch grid")


PseudoMaskMethod = Literal[ROUTE_NAMES]  # the registered routes (pipeline/routes.py)


class PseudoMasksCfg(Section):
    method: PseudoMaskMethod = Field("crf", description="the route the final model trains on (<out>/masks/)")
    extra_methods: list[PseudoMaskMethod] = Field(default_factory=list, description="further routes written to "
                                                  "<out>/masks_<method>/ and scored by evaluate beside it")
    sam_p: float = Field(0.7, gt=0, description="sam route: background score (1 - max fg score) ** sam_p; "
                         "FMA-WSSS VOC: 0.6 on coarse, 0.7 on fine CAMs (export_cams.cam: fine)")
    bg_threshold: float = Field(0.43, ge=0, le=1, description="VOC: WeakTr docs/Training.md, CRF "
                                "post-processing `evaluation.py ... --t 43` (COCO 0.42)")
    low_threshold: Optional[float] = Field(None, ge=0, le=1, description="uncertain band lower bg threshold")
    high_threshold: Optional[float] = Field(None, ge=0, le=1, description="uncertain band upper bg threshold")
    ignore_uncertain: bool = True
    crf: CrfCfg = Field(default_factory=CrfCfg)
    affinity: AffinityCfg = Field(default_factory=AffinityCfg)
    gallery_size: int = Field(8, ge=0, description="seed | pseudo mask pictures of a fixed sample")
    coco_json: bool = Field(False, description="also write the masks as COCO JSON (one RLE per class per image)")

    @model_validator(mode="after")
    def _check_band(self):
        lo, hi = self.low_threshold, self.high_threshold
        if (lo is None) != (hi is None):
            raise ValueError("low_threshold and high_threshold must be set together")
        if lo is not None and not 0 <= lo <= hi <= 1:
            raise ValueError(f"need 0 <= low_threshold <= high_threshold <= 1, got {lo}, {hi}")
        if self.method in self.extra_methods or len(set(self.extra_methods)) != len(self.extra_methods):
            raise ValueError(f"extra_methods {self.extra_methods} repeats a route (method is '{self.method}')")
        return self

    @property
    def routes(self) -> list[str]:
        return [self.method, *self.extra_methods]


class TrainSegmentationCfg(Section):
    """mmsegmentation model trained on the pseudo masks (pipeline/segmentation)."""
    model: Literal["deeplabv3plus", "deeplabv2", "mask2former"] = "deeplabv3plus"
    backbone: Literal["resnet18", "resnet50", "resnet101", "swin_t", "swin_s", "swin_b", "swin_l"] = "resnet101"
    depth: Optional[Literal[18, 34, 50, 101, 152]] = Field(None, description="ResNet depth override (mmseg ResNet)")
    # local checkpoint file, or a hub name mmengine can load (open-mmlab://resnet101_v1c, an http URL)
    pretrained: Optional[str] = None
    crop_size: int = Field(512, ge=32)
    batch_size: int = Field(16, ge=1, description="total over all processes")
    iters: int = Field(40000, ge=1)
    optimizer: Optional[Literal["sgd", "adamw"]] = Field(None,
                                                         description="None: SGD for DeepLab, AdamW for Mask2Former")
    lr: Positive = 0.01
    weight_decay: NonNegative = 5e-4
    amp: bool = Field(False, description="mixed precision (CUDA only)")
    val_interval: int = Field(4000, ge=1)
    checkpoint_interval: int = Field(4000, ge=1)
    log_interval: int = Field(50, ge=1)
    gallery_size: int = Field(8, ge=0)
    tiny: bool = Field(False, description="small random-initialised variant (tests, smoke)")
    # the papers' protocols, each switchable
    checkpoint_selection: Literal["last", "best_val_miou"] = Field(
        "last", description="final model: the last iteration, or the val checkpoint with the best mIoU "
        "(mmengine save_best='mIoU'; FMA-WSSS reports this; numbers are then selected on val ground truth)")
    frozen_bn: Optional[bool] = Field(None, description="BatchNorm in eval mode, no grad; None: on for deeplabv2")
    head_lr_mult: Optional[float] = Field(None, gt=0, description="decode_head lr multiplier; None: 10 for "
                                          "deeplabv2 (DeepLab-v2's classifier x10), 1 otherwise")
    pretrained_format: Literal["pytorch", "caffe"] = Field(
        "pytorch", description="what the pretrained weights expect. pytorch: RGB input, ImageNet mean/std, "
        "ResNet stride in the 3x3 conv; caffe (caffe-converted DeepLab-v2 ResNet-101, keys Scale.*): "
        "BGR 0-255 minus mean, stride in the first 1x1 conv")
    tta: bool = Field(False, description="multi-scale + flip test of the final model (mmseg SegTTAModel)")
    tta_scales: list[Positive] = Field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], min_length=1)
    crf: Optional[CrfCfg] = Field(None, description="dense CRF on the final model's predictions; None = off")
    predict_split: Optional[str] = Field(None, description="split whose predictions the final model writes "
                                         "(PNGs + COCO JSON); None = none")


class EnsembleCfg(Section):
    """Further final models blended with train_segmentation's at evaluation time (stage ensemble,
    pipeline/segmentation/ensemble.py): the SemPLeS authors' FMA-WSSS fork, ensemble.py (2024-02-15..17)."""
    routes: list[PseudoMaskMethod] = Field(default_factory=list, description="one more final model per route, "
                                           "trained with train_segmentation's recipe on that route's pseudo "
                                           "masks (a route of pseudo_masks.extra_methods); empty = no ensemble")
    weights: list[NonNegative] = Field(default_factory=lambda: [0.85, 0.15], min_length=1, description="blend weights: "
                                 "train_segmentation's model first, then one per route (the fork's ensemble.py "
                                 "a = 0.85 / 1 - a, swept 1.0..0.7)")
    gallery_size: int = Field(4, ge=0, description="val image | blend | GT rows")

    @model_validator(mode="after")
    def _check_weights(self):
        if self.routes:
            if len(self.weights) != 1 + len(self.routes):
                raise ValueError(f"ensemble.weights: {len(self.weights)} weights for {1 + len(self.routes)} models "
                                 "(train_segmentation's, then one per ensemble.routes entry)")
            if min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ValueError(f"ensemble.weights: {self.weights}: need non-negative weights, not all zero")
            if len(set(self.routes)) != len(self.routes):
                raise ValueError(f"ensemble.routes: {self.routes} names a route twice")
        return self


class ChecksCfg(Section):
    """Image checks of `wsss data check` and of every run once prepare_data is done
    (pipeline/data/image_checks.py). No stage declares this section, so it is part of no
    artifact key: it decides whether a run may go on, never what a stage computes."""
    min_patches: int = Field(1, ge=1, description="patches of the mask generator the shorter image side must "
                             "give at the smallest export_cams scale (fewer: no CAM grid, the export fails)")
    small_images: Literal["error", "warn"] = Field("error", description="an image below min_patches: refuse "
                                                   "the run (error) or log a warning")
    export_memory_gb: float = Field(32.0, gt=0, description="budget for one image's CAM forward with its flip at "
                                    "the largest export_cams scale (estimated from the attention maps the "
                                    "mask generator keeps, float32)")
    large_images: Literal["error", "warn"] = Field("error", description="an image over export_memory_gb: refuse "
                                                   "the run (error; resize the image) or log a warning")


# the official seed sweep: SemPLeS/WeakTr evaluation.py --start 40 (--end 60), thresholds range(40, 60) / 100
OFFICIAL_SWEEP = tuple(round(0.01 * i, 2) for i in range(40, 60))


class EvaluateCfg(Section):
    bg_threshold: float = Field(0.43, ge=0, le=1, description="the fixed seed threshold = the pseudo masks' "
                                "(VOC: WeakTr docs/Training.md --t 43)")
    sweep: list[Fraction] = Field(default_factory=lambda: list(OFFICIAL_SWEEP), min_length=1,
                               description="background thresholds of the seed sweep (picks its best with GT)")
    gallery_size: int = Field(8, ge=0)


class Config(Section):
    run: RunCfg = Field(default_factory=RunCfg)
    data: DataCfg
    mask_generator: MaskGeneratorCfg = Field(default_factory=MaskGeneratorCfg)
    clip: ClipCfg = Field(default_factory=ClipCfg)
    train_cam: TrainCamCfg = Field(default_factory=TrainCamCfg)
    match: MatchCfg = Field(default_factory=MatchCfg)
    learn_prompts: LearnPromptsCfg = Field(default_factory=LearnPromptsCfg)
    refine: RefineCfg = Field(default_factory=RefineCfg)
    import_cams: ImportCamsCfg = Field(default_factory=ImportCamsCfg)
    export_cams: ExportCamsCfg = Field(default_factory=ExportCamsCfg)
    sam: SamCfg = Field(default_factory=SamCfg)
    pseudo_masks: PseudoMasksCfg = Field(default_factory=PseudoMasksCfg)
    import_masks: ImportMasksCfg = Field(default_factory=ImportMasksCfg)
    train_segmentation: TrainSegmentationCfg = Field(default_factory=TrainSegmentationCfg)
    ensemble: EnsembleCfg = Field(default_factory=EnsembleCfg)
    evaluate: EvaluateCfg = Field(default_factory=EvaluateCfg)
    checks: ChecksCfg = Field(default_factory=ChecksCfg)

    # set by load_config, not by YAML
    source: Optional[str] = Field(None, exclude=True)

    @model_validator(mode="after")
    def _check_splits(self):
        if self.data.dataset == "coco":
            for name in self.data.all_splits:
                s = self.data.splits.get(name)
                if s is None or not (s.images and s.annotations):
                    raise ValueError(f"data.splits.{name}: COCO needs 'images' and 'annotations'")
        lp = self.learn_prompts
        if lp.select != "last" or lp.seed_eval_every:
            raise ValueError("learn_prompts.select / learn_prompts.seed_eval_every: phase 2 trains the prompts "
                             "only (S is frozen, its seeds do not change); keep 'last' and 0")
        for stage in ("train_cam", "match", "refine"):
            split = seed_eval_split(self, stage)
            if getattr(self, stage).seed_eval_every and split not in self.data.all_splits:
                raise ValueError(f"{stage}.seed_eval_split: '{split}' is not a split with ground truth of this "
                                 f"config (data splits: {', '.join(self.data.all_splits)})")
        if self.data.dataset == "folder":
            if not self.data.classes:
                raise ValueError("data.classes: a folder dataset needs a class list file")
            for name in self.data.all_splits:
                s = self.data.splits.get(name)
                if s is None or not s.labels:
                    raise ValueError(f"data.splits.{name}: a folder dataset needs 'labels' (a labels file)")
        elif self.data.val_split is None:
            raise ValueError("data.val_split: VOC/COCO need a val split")
        if "sam" in self.pseudo_masks.routes and self.sam.split != self.export_cams.split:
            raise ValueError(f"sam.split '{self.sam.split}' must equal export_cams.split '{self.export_cams.split}' "
                             "(the sam route labels SAM's masks with the exported CAMs)")
        bad = [r for r in self.ensemble.routes if r not in self.pseudo_masks.extra_methods]
        if bad:
            raise ValueError(f"ensemble.routes: {bad} not in pseudo_masks.extra_methods "
                             f"{self.pseudo_masks.extra_methods} (train_segmentation's model trains on "
                             f"pseudo_masks.method '{self.pseudo_masks.method}'; each further model on an extra route)")
        if self.ensemble.routes and self.data.val_split is None:
            raise ValueError("ensemble.routes: the blend is scored on the val split; data.val_split is null")
        if self.export_cams.source == "import":
            if self.import_cams.dir is None:
                raise ValueError("export_cams.source 'import' needs import_cams.dir (the folder of CAM files)")
            aff = [m for m in self.pseudo_masks.routes if m.startswith("affinity")]
            if aff:
                raise ValueError(f"pseudo_masks routes {aff} walk the mask generator's attention, which imported "
                                 "CAMs do not have (export_cams.source: import); use argmax, crf or sam")
        pred = self.train_segmentation.predict_split
        if pred is not None and pred not in self.data.all_splits:
            raise ValueError(f"train_segmentation.predict_split: '{pred}' is none of the data splits "
                             f"{self.data.all_splits}")
        return self

    def section(self, name: str) -> dict:
        """A section as the artifact keys see it: without its THROUGHPUT fields."""
        drop = {t.split(".", 1)[1] for t in THROUGHPUT if t.startswith(name + ".")}
        return json.loads(getattr(self, name).model_dump_json(exclude=drop or None))

    def resolved(self) -> dict:
        """Every field as JSON (not ``source``): Config.model_validate(resolved()) rebuilds it;
        the flow hands this to its tasks."""
        return json.loads(self.model_dump_json())


def seed_eval_split(cfg: Config, stage: str) -> str:
    """The GT split a training stage's seeds are scored on."""
    return getattr(cfg, stage).seed_eval_split or cfg.data.eval_split or cfg.data.train_split


# ------------------------------------------------------------------ loading
def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _merge(base: dict, child: dict, origin: dict, child_file: str, prefix: str = "") -> dict:
    out = dict(base)
    for k, v in child.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, origin, child_file, key + ".")
        else:
            out[k] = v
            _mark(origin, key, v, child_file)
    return out


def _mark(origin: dict, key: str, value: Any, file: str) -> None:
    origin[key] = file
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(origin, f"{key}.{k}", v, file)


def _load_raw(path: Path, origin: dict, seen: tuple = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for b in bases:
        merged = _merge(merged, _load_raw(path.parent / b, origin, seen + (path,)), {}, "")
    # origins of base keys were recorded while each base loaded
    return _merge(merged, data, origin, str(path))


def _origin_of(origin: dict, loc: tuple) -> str:
    parts = [str(p) for p in loc]
    while parts:
        f = origin.get(".".join(parts))
        if f:
            return f
        parts.pop()
    return "?"


def load_config(path: str | Path, overrides: Optional[dict] = None, check_paths: bool = True) -> Config:
    """Load, merge and validate a config; raise ConfigError naming file and key.
    check_paths=False: files it names need not exist yet (`wsss fetch` creates them)."""
    path = Path(path)
    origin: dict[str, str] = {}
    raw = _load_raw(path, origin)
    if overrides:
        raw = _merge(raw, overrides, origin, "<overrides>")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "<root>"
            msgs.append(f"{_origin_of(origin, loc) if loc else path}: {key}: {err['msg']}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(msgs)) from None
    cfg.source = str(path.resolve())
    if check_paths:
        _check_paths(cfg, origin)
    return cfg


def _is_hub_tag(value: str) -> bool:
    return not _looks_like_path(value)


def _looks_like_path(value: str) -> bool:
    if "://" in value:  # hub name / URL (open-mmlab://..., https://...), not a local file
        return False
    return "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _check_paths(cfg: Config, origin: dict) -> None:
    problems = []
    if not cfg.data.root.exists() and not cfg.data.fetch:
        problems.append(("data.root", cfg.data.root))
    for key in ("mask_generator.pretrained", "clip.pretrained", "train_segmentation.pretrained",
                "train_cam.init_checkpoint"):
        sec, field = key.split(".")
        v = getattr(getattr(cfg, sec), field)
        if isinstance(v, str) and _looks_like_path(v) and not Path(v).exists():
            problems.append((key, v))
    if cfg.sam.checkpoint and "://" not in cfg.sam.checkpoint and not Path(cfg.sam.checkpoint).exists():
        problems.append(("sam.checkpoint", cfg.sam.checkpoint))
    for stage in ("train_cam", "match", "refine"):
        ids = getattr(cfg, stage).seed_eval_ids
        if ids is not None and not ids.exists():
            problems.append((f"{stage}.seed_eval_ids", ids))
    if problems:
        raise ConfigError("missing paths:\n  " + "\n  ".join(
            f"{_origin_of(origin, tuple(k.split('.')))}: {k}: {p} does not exist"
            + (f" ({missing_root_hint(cfg.data, cfg.source)})" if k == "data.root" else "") for k, p in problems))


def missing_root_hint(data: "DataCfg", config: Optional[str] = None) -> str:
    """How to get a data set root that is not there."""
    if data.dataset == "folder":
        return "point data.root at your image folder; `wsss init-dataset FOLDER` writes a config for one"
    cfg = f" --config {config}" if config else ""
    return (f"get it with `wsss fetch {data.dataset}{cfg}`, or set `data.fetch: true` to let prepare_data "
            f"fetch it, or point data.root at your copy")
