"""Warm start (WeakTr): the mask generator S learns to classify, a multilabel soft margin on its
class-token, patch and attention logits (pipeline.semples.losses.train_cam_step); or WeakTr's
released checkpoint is imported instead (train_cam.init_checkpoint)."""
from __future__ import annotations

from pathlib import Path

from timm.optim import param_groups_weight_decay

from pipeline.artifacts import ModelArtifact
from pipeline.config import Config
from pipeline.data.datasets import LabelTable
from pipeline.evaluation.report import selection_label
from pipeline.models.mask_generator import save_mask_generator
from pipeline.models.weaktr_import import fusion_kind, import_weaktr_checkpoint, read_official_state_dict
from pipeline.semples.losses import train_cam_step
from pipeline.semples.phase import Phase
from pipeline.semples.phases.common import device_of, finish, fit_phase, gallery, generator, setup
from pipeline.semples.training import TrainImages, is_main

NO_DECAY = ("cls_tokens", "cls_pos", "patch_pos")


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


def run(cfg: Config, inputs: dict, out: Path) -> dict:
    tc = cfg.train_cam
    if tc.init_checkpoint:  # WeakTr's released warm start instead of training one
        # nothing random happens (every weight comes from the checkpoint, the import is strict, no
        # ImageNet weights to load), so run.seed is neither read nor part of train_cam's key then
        device, table = device_of(cfg), LabelTable.from_artifact(inputs["prepare_data"], cfg.data.train_split)
        gal = TrainImages(table, tc.crop_size, train=False, ids=table.ids()[: tc.gallery_size])
        k = table.num_classes - 1
        sd = read_official_state_dict(tc.init_checkpoint)
        model, mcfg, _ = generator(cfg, k, None, device, fusion_kind(sd, tc.init_checkpoint), load_weights=False,
                                   seeded=False)
        m = import_weaktr_checkpoint(model, tc.init_checkpoint, sd)
        if is_main():  # no epochs, so no epoch selection: the imported weights are the kept ones
            gallery(model.eval(), gal, table, device)(ModelArtifact(out).gallery)
            save_mask_generator(model, ModelArtifact(out).weights, mcfg, k)
        return m | {"selection": selection_label(cfg, "train_cam")}
    device, table, train, gal, k = setup(cfg, inputs, tc)
    official = tc.recipe == "official"
    model, mcfg, _ = generator(cfg, k, None, device, "features" if official else "maps")
    model.set_recipe(detach_tokens=False, detach_coarse=True)  # WeakTr / SemPLeS models.py
    groups = warm_start_param_groups(model, tc.recipe, tc.weight_decay)
    m = fit_phase(cfg, "train_cam", inputs, out, train, model, train_cam_step, gallery(model, gal, table, device),
                  param_groups=groups)
    return finish(model, out, cfg, mcfg, k, "train_cam", m)


PHASE = Phase(name="train_cam", run=run, step=train_cam_step, trainable="the whole mask generator")
