"""Phase 3, Prompt-guided Semantic Refinement: S learns L_match + lambda L_refine against the
frozen learned prompts (pipeline.semples.losses.refine_step)."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.artifacts import ModelArtifact
from pipeline.config import Config
from pipeline.semples.losses import refine_step
from pipeline.semples.phase import Phase
from pipeline.semples.phases.common import (finish, fit_phase, gallery, generator, load_prompts, set_trainable,
                                            setup, step_context)


def run(cfg: Config, inputs: dict, out: Path) -> dict:
    rc = cfg.refine
    device, table, train, gal, k = setup(cfg, inputs, rc)
    model, mcfg, init = generator(cfg, k, inputs[rc.init_from], device, "features")
    set_trainable(model, rc.trainable)
    ctx = step_context(cfg, table, device)
    pk = load_prompts(inputs["learn_prompts"]).to(device)
    if pk.shape[0] != k:
        raise ValueError(f"{ModelArtifact(inputs['learn_prompts']).prompts}: {pk.shape[0]} class prompts, "
                         f"expected {k}")
    with torch.no_grad():  # p_k is frozen: its text features are fixed for the stage
        prompt_feats = ctx.vl.encode_prompted(pk).float()

    def step(s, x, y):
        return refine_step(s, ctx, prompt_feats, x, y, rc.lambda_b, rc.lambda_refine, rc.mask_eps)

    m = fit_phase(cfg, "refine", inputs, out, train, model, step, gallery(model, gal, table, device))
    return finish(model, out, cfg, mcfg, k, "refine", m | {"init": init})


PHASE = Phase(name="refine", run=run, step=refine_step, trainable="refine.trainable: head (official) or all")
