"""What the training phases share: device, data, the mask generator S (built, loaded, made
trainable), the CLIP step context, the FitSpec of a phase (``train``) and the saving of the
kept weights (``finish``). What the phases write: pipeline/artifacts.py ModelArtifact."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from pipeline.artifacts import ModelArtifact
from pipeline.config import Config
from pipeline.data.classes import prompt_names
from pipeline.data.datasets import LabelTable
from pipeline.evaluation.report import selection_label
from pipeline.fileio import decoding
from pipeline.models.mask_generator import (MEAN, STD, build_mask_generator, load_weights_from,
                                            save_mask_generator)
from pipeline.models.vl import build_vl, class_text_features
from pipeline.semples.losses import StepContext
from pipeline.semples.seed_eval import seed_miou_eval
from pipeline.semples.training import FitSpec, StepFn, TrainImages, dist_info, fit, is_main, write_gallery
from pipeline.utils import get_device, seed_everything

log = logging.getLogger("wsss")


def device_of(cfg: Config) -> torch.device:
    dev = get_device(cfg.run.device)
    if dev.type == "cuda" and dist_info()[1] > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return dev


def data(cfg: Config, inputs: dict, tcfg):
    table = LabelTable.from_artifact(inputs["prepare_data"], cfg.data.train_split)
    if len(table) == 0:
        raise ValueError(f"{inputs['prepare_data']}: label table of '{cfg.data.train_split}' is empty")
    train = TrainImages(table, tcfg.crop_size, seed=cfg.run.seed, train=True, augment=tcfg.augment)
    gal = TrainImages(table, tcfg.crop_size, train=False, ids=table.ids()[: tcfg.gallery_size])
    return table, train, gal


def _model_path(d: Path) -> Path:
    p = ModelArtifact(d).weights
    if not p.exists():
        raise FileNotFoundError(f"{p}: upstream mask generator weights missing")
    return p


def generator(cfg: Config, k: int, init: Path | None, device, fusion: str, load_weights: bool = True,
               seeded: bool = True):
    """S with the fusion of its phase (official: features; WeakTr V1 warm start: maps),
    optionally loaded from an upstream model.pt; returns (model, its config, load record).
    seeded=False: every weight is overwritten afterwards (an import), so run.seed is not read."""
    if seeded:
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    mcfg = cfg.mask_generator.model_copy(update={"fusion": fusion})
    model = build_mask_generator(mcfg, k, load_weights=load_weights and init is None)
    record = None
    if init is not None:
        keys = load_weights_from(model, _model_path(init))
        record = {"from": str(_model_path(init)), "loaded": len(keys["loaded"]), "fresh": keys["fresh"]}
        if is_main():
            groups: dict[str, int] = {}
            for name in keys["loaded"]:
                top = name.split(".")[0]
                groups[top] = groups.get(top, 0) + 1
            log.info("%s: loaded %d tensors (%s)", record["from"], record["loaded"],
                     ", ".join(f"{g}: {n}" for g, n in groups.items()))
            log.debug("loaded tensors: %s", ", ".join(keys["loaded"]))
            if keys["fresh"]:
                log.info("start freshly initialised (the warm start has another attention fusion; the "
                         "official phases load it with strict=False): %s", ", ".join(keys["fresh"]))
            else:
                log.info("every tensor loaded: the phase starts from the warm start's trained fusion")
    return model.to(device), mcfg, record


def set_trainable(model, trainable: str) -> None:
    """SemPLeS phases 1/3. head (official): patch tokens detached, backbone, class tokens and
    position embeddings frozen at the warm start; all: everything learns."""
    model.set_recipe(detach_tokens=trainable == "head", detach_coarse=False)
    if trainable == "head":
        for p in model.backbone_parameters():
            p.requires_grad_(False)


def step_context(cfg: Config, table: LabelTable, device) -> StepContext:
    vl = build_vl(cfg.clip, device)
    names = table.prompt_names if cfg.clip.class_names == "label" or table.dataset == "folder" else \
        prompt_names(table.dataset, official=True)
    text = class_text_features(vl, names, cfg.clip.template).to(device)
    return StepContext(vl, text, MEAN, STD, renormalise=cfg.clip.input_norm == "clip")


def gallery(model, gal, table, device):
    names = list(table.classes[1:])
    return lambda path: write_gallery(path, model.cams, gal, names, device)


def finish(model, out: Path, cfg: Config, mcfg, k: int, stage: str, metrics: dict) -> dict:
    """Save the kept weights (the last epoch's, or with select 'gt_miou' the
    best epoch's) as the artifact's weights; the metrics say which selection was used."""
    if is_main():
        art = ModelArtifact(out)
        if getattr(cfg, stage).selects_on_gt():
            with decoding(art.best_state, "best-epoch weights file"):
                state = torch.load(art.best_state, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        save_mask_generator(model, art.weights, mcfg, k)
    return {"selection": selection_label(cfg, stage)} | metrics


def fit_phase(cfg: Config, stage: str, inputs: dict, out: Path, dataset: TrainImages, trainable, step: StepFn,
          draw_gallery, param_groups=None) -> dict:
    """fit() of a phase: its section's recipe, run.seed and num_workers, the gallery and the seed
    evaluation its section asks for (a phase that makes no CAMs keeps seed_eval_every 0: Config)."""
    device = device_of(cfg)
    epoch_eval = seed_miou_eval(cfg, stage, inputs["prepare_data"], device)  # None: seed_eval_every 0
    return fit(FitSpec(out, getattr(cfg, stage), cfg.run.seed, dataset, trainable, step, device, name=stage,
                       num_workers=cfg.run.num_workers, param_groups=param_groups, epoch_eval=epoch_eval,
                       gallery=draw_gallery))


def setup(cfg: Config, inputs: dict, tcfg):
    """Seeded start of every phase: device, label table, train/gallery data, K."""
    seed_everything(cfg.run.seed)
    table, train, gal = data(cfg, inputs, tcfg)
    return device_of(cfg), table, train, gal, table.num_classes - 1


def load_prompts(d: Path) -> torch.Tensor:
    p = ModelArtifact(d).prompts
    if not p.exists():
        raise FileNotFoundError(f"{p}: learned prompts missing")
    with decoding(p, "learned prompts file"):
        return torch.load(p, map_location="cpu", weights_only=True)["prompts"]


