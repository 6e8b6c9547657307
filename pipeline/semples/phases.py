"""The four SemPLeS learning phases (warm start, match, learn_prompts, refine) on top of
pipeline.semples.training.fit; the stages train_cam, match, learn_prompts and refine
call them. What they write: pipeline/artifacts.py ModelArtifact."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay

from pipeline.artifacts import ModelArtifact
from pipeline.config import Config
from pipeline.data.classes import prompt_names
from pipeline.data.datasets import LabelTable
from pipeline.evaluation.report import selection_label
from pipeline.models.mask_generator import (MEAN, STD, build_mask_generator, load_weights_from,
                                            save_mask_generator)
from pipeline.models.vl import PromptLearner, build_vl, class_text_features
from pipeline.models.weaktr_import import fusion_kind, import_weaktr_checkpoint, read_official_state_dict
from pipeline.semples.losses import StepContext, learn_prompts_step, match_step, refine_step, train_cam_step
from pipeline.semples.seed_eval import seed_miou_eval
from pipeline.semples.training import TrainImages, dist_info, fit, is_main, write_gallery
from pipeline.store import decoding, torch_save_atomic
from pipeline.utils import get_device, seed_everything

log = logging.getLogger("wsss")
NO_DECAY = ("cls_tokens", "cls_pos", "patch_pos")


def device_of(cfg: Config) -> torch.device:
    dev = get_device(cfg.run.device)
    if dev.type == "cuda" and dist_info()[1] > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return dev


def _data(cfg: Config, inputs: dict, tcfg):
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


def _generator(cfg: Config, k: int, init: Path | None, device, fusion: str, load_weights: bool = True,
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


def _set_trainable(model, trainable: str) -> None:
    """SemPLeS phases 1/3. head (official): patch tokens detached, backbone, class tokens and
    position embeddings frozen at the warm start; all: everything learns."""
    model.set_recipe(detach_tokens=trainable == "head", detach_coarse=False)
    if trainable == "head":
        for p in model.backbone_parameters():
            p.requires_grad_(False)


def _context(cfg: Config, table: LabelTable, device) -> StepContext:
    vl = build_vl(cfg.clip, device)
    names = table.prompt_names if cfg.clip.class_names == "label" or table.dataset == "folder" else \
        prompt_names(table.dataset, official=True)
    text = class_text_features(vl, names, cfg.clip.template).to(device)
    return StepContext(vl, text, MEAN, STD, renormalise=cfg.clip.input_norm == "clip")


def _gallery(model, gal, table, device):
    names = list(table.classes[1:])
    return lambda path: write_gallery(path, model.cams, gal, names, device)


def _finish(model, out: Path, cfg: Config, mcfg, k: int, stage: str, metrics: dict) -> dict:
    """Save the kept weights (the last epoch's, or with select 'gt_miou' the
    best epoch's) as the artifact's weights; the metrics say which selection was used."""
    if is_main():
        art = ModelArtifact(out)
        if getattr(cfg, stage).select == "gt_miou":
            with decoding(art.best_state, "best-epoch weights file"):
                state = torch.load(art.best_state, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        save_mask_generator(model, art.weights, mcfg, k)
    return {"selection": selection_label(cfg, stage)} | metrics


def _seed_eval(cfg: Config, stage: str, inputs: dict, device):
    return seed_miou_eval(cfg, stage, inputs["prepare_data"], device)


def _setup(cfg: Config, inputs: dict, tcfg):
    """Seeded start of every phase: device, label table, train/gallery data, K."""
    seed_everything(cfg.run.seed)
    table, train, gal = _data(cfg, inputs, tcfg)
    return device_of(cfg), table, train, gal, table.num_classes - 1


def warm_start_param_groups(model, recipe: str, weight_decay: float) -> list[dict] | None:
    """AdamW groups of the warm start. official: SemPLeS / WeakTr main.py at HEAD call timm
    create_optimizer(args, model.parameters()); given an iterable rather than a module, timm
    forms no groups and consults no no_weight_decay(): every parameter decays with
    args.weight_decay (None: fit's single group). weaktr_v1: create_optimizer(args, model):
    timm's param_groups_weight_decay with the model's no_weight_decay() (class tokens and
    positions) and every 1-d tensor / bias undecayed."""
    if recipe == "official":
        return None
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=NO_DECAY)


def run_train_cam(cfg: Config, inputs: dict, out: Path) -> dict:
    tc = cfg.train_cam
    if tc.init_checkpoint:  # WeakTr's released warm start instead of training one
        # nothing random happens (every weight comes from the checkpoint, the import is strict, no
        # ImageNet weights to load), so run.seed is neither read nor part of train_cam's key then
        device, table = device_of(cfg), LabelTable.from_artifact(inputs["prepare_data"], cfg.data.train_split)
        gal = TrainImages(table, tc.crop_size, train=False, ids=table.ids()[: tc.gallery_size])
        k = table.num_classes - 1
        sd = read_official_state_dict(tc.init_checkpoint)
        model, mcfg, _ = _generator(cfg, k, None, device, fusion_kind(sd, tc.init_checkpoint), load_weights=False,
                                    seeded=False)
        m = import_weaktr_checkpoint(model, tc.init_checkpoint, sd)
        if is_main():  # no epochs, so no epoch selection: the imported weights are the kept ones
            _gallery(model.eval(), gal, table, device)(ModelArtifact(out).gallery)
            save_mask_generator(model, ModelArtifact(out).weights, mcfg, k)
        return m | {"selection": selection_label(cfg, "train_cam")}
    device, table, train, gal, k = _setup(cfg, inputs, tc)
    official = tc.recipe == "official"
    model, mcfg, _ = _generator(cfg, k, None, device, "features" if official else "maps")
    model.set_recipe(detach_tokens=False, detach_coarse=True)  # WeakTr / SemPLeS models.py
    groups = warm_start_param_groups(model, tc.recipe, tc.weight_decay)
    m = fit(out, tc, cfg.run.seed, train, model, train_cam_step, device, cfg.run.num_workers,
            "train_cam", _gallery(model, gal, table, device), param_groups=groups,
            epoch_eval=_seed_eval(cfg, "train_cam", inputs, device))
    return _finish(model, out, cfg, mcfg, k, "train_cam", m)


def run_match(cfg: Config, inputs: dict, out: Path) -> dict:
    mc = cfg.match
    device, table, train, gal, k = _setup(cfg, inputs, mc)
    model, mcfg, init = _generator(cfg, k, inputs["train_cam"], device, "features")
    _set_trainable(model, mc.trainable)
    ctx = _context(cfg, table, device)

    def step(s, x, y):
        return match_step(s, ctx, x, y, mc.lambda_b, mc.mask_eps)

    m = fit(out, mc, cfg.run.seed, train, model, step, device, cfg.run.num_workers, "match",
            _gallery(model, gal, table, device), epoch_eval=_seed_eval(cfg, "match", inputs, device))
    return _finish(model, out, cfg, mcfg, k, "match", m | {"init": init})


def run_learn_prompts(cfg: Config, inputs: dict, out: Path) -> dict:
    from pipeline.semples.interpret import interpret_prompts
    lc = cfg.learn_prompts
    device, table, train, gal, k = _setup(cfg, inputs, lc)
    model, _, init = _generator(cfg, k, inputs["match"], device, "features")
    model = model.eval().requires_grad_(False)  # engine2.py: S in eval mode, under no_grad
    ctx = _context(cfg, table, device)
    torch.manual_seed(cfg.run.seed)
    prompts = PromptLearner(k, lc.n_prompts, ctx.vl.token_width, init=lc.prompt_init).to(device)

    def step(p, x, y):
        return learn_prompts_step(model, ctx, p(ctx.vl), x, y, lc.lambda_t, lc.mask_eps)

    m = fit(out, lc, cfg.run.seed, train, prompts, step, device, cfg.run.num_workers, "learn_prompts",
            _gallery(model, gal, table, device))
    m["init"] = init
    if is_main():
        torch_save_atomic({"prompts": prompts.prompts.detach().cpu(), "template": cfg.clip.template,
                           "clip": cfg.clip.model_dump(mode="json"), "classes": list(table.classes[1:])},
                          ModelArtifact(out).prompts)
        if lc.n_interpret_images:
            m["interpret"] = interpret_prompts(Path(out) / "interpret", ctx, prompts.prompts.detach(), gal,
                                               table, lc.n_interpret_images, lc.vocab_topk, device)
    return m


def load_prompts(d: Path) -> torch.Tensor:
    p = ModelArtifact(d).prompts
    if not p.exists():
        raise FileNotFoundError(f"{p}: learned prompts missing")
    with decoding(p, "learned prompts file"):
        return torch.load(p, map_location="cpu", weights_only=True)["prompts"]


def run_refine(cfg: Config, inputs: dict, out: Path) -> dict:
    rc = cfg.refine
    device, table, train, gal, k = _setup(cfg, inputs, rc)
    model, mcfg, init = _generator(cfg, k, inputs[rc.init_from], device, "features")
    _set_trainable(model, rc.trainable)
    ctx = _context(cfg, table, device)
    pk = load_prompts(inputs["learn_prompts"]).to(device)
    if pk.shape[0] != k:
        raise ValueError(f"{ModelArtifact(inputs['learn_prompts']).prompts}: {pk.shape[0]} class prompts, "
                         f"expected {k}")
    with torch.no_grad():  # p_k is frozen: its text features are fixed for the stage
        prompt_feats = ctx.vl.encode_prompted(pk).float()

    def step(s, x, y):
        return refine_step(s, ctx, prompt_feats, x, y, rc.lambda_b, rc.lambda_refine, rc.mask_eps)

    m = fit(out, rc, cfg.run.seed, train, model, step, device, cfg.run.num_workers, "refine",
            _gallery(model, gal, table, device), epoch_eval=_seed_eval(cfg, "refine", inputs, device))
    return _finish(model, out, cfg, mcfg, k, "refine", m | {"init": init})
