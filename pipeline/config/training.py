"""The training phases: TrainCfg and the sections of train_cam, match, learn_prompts and refine."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from pipeline.config.base import NonNegative, Positive, Section


class TrainCfg(Section):
    """A training phase; defaults: the SemPLeS phases' (kuongan/SemPLeS README.md VOC
    commands, main1-3.py defaults: 60 epochs, batch 64, weight decay 0.03, no warmup, min lr 0).
    A field of Config of this type is a training phase's section (``phase_sections``); what
    the config's rules need to know of the phase its section says (methods, which a stage's
    config view runs too)."""
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
    # checkpoint selection (docs/guide/stages.md, "Checkpoint selection and seed evaluation")
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

    def cams_label(self) -> Optional[str]:
        """How reports name the CAMs of the mask generator this phase trains; None: it trains
        none. Set: export_cams.source may name it, select / seed_eval_* apply."""
        return None

    def imports(self) -> Optional[str]:
        """The field naming weights the phase imports instead of training (its path is checked)."""
        return None

    def imported_from(self) -> Optional[str]:
        """The weights file the phase imports instead of training, if any."""
        return getattr(self, self.imports()) if self.imports() else None

    def selects_on_gt(self) -> bool:
        """The one place that decides whether the phase keeps the epoch with the best seed mIoU
        against ground truth (select: gt_miou) rather than its last: the training loop's KeepBest,
        the kept weights, the seed evaluation's refusal without GT and the reports ask here."""
        return self.select == "gt_miou"

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

    def imports(self) -> Optional[str]:
        return "init_checkpoint"

    def cams_label(self) -> Optional[str]:
        return "classification warm start"


class MatchCfg(TrainCfg):
    lambda_b: NonNegative = 2.4  # README main1.py --hypers 2.4 (VOC)
    mask_eps: Positive = 0.1  # engine1.py min-max eps
    # head: as models123.py, patch tokens and attention detached, only the CAM head and the
    # attention fusion learn; all: the whole mask generator learns (a deviation)
    trainable: Literal["head", "all"] = "head"

    def cams_label(self) -> Optional[str]:
        return "L_match only (phase 1)"


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

    def cams_label(self) -> Optional[str]:
        return "full SemPLeS (phase 3)"


def phase_sections(cfg, cams_only: bool = False) -> dict[str, TrainCfg]:
    """The training phases' sections of ``cfg`` (a Config, or a stage's checked view of one) by
    name: every TrainCfg field of Config, in Config's order; cams_only: those of the phases that
    train the mask generator (cams_label). Chosen by the fields' types, so a view reads only
    the sections it returns."""
    config_type = type(getattr(cfg, "_obj", cfg))  # a ConfigView (stages/contract.py) wraps the Config
    return {n: getattr(cfg, n) for n, f in config_type.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, TrainCfg)
            and (not cams_only or f.annotation.model_construct().cams_label() is not None)}


def seed_eval_split(cfg, stage: str) -> str:
    """The GT split a training stage's seeds are scored on (``cfg``: a Config or a stage's view)."""
    return getattr(cfg, stage).seed_eval_split or cfg.data.eval_split or cfg.data.train_split
