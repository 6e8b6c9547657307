"""Phase 2, Contrastive Prompt Learning: S frozen, the class prompts p_k learn L_prompt
(pipeline.semples.losses.learn_prompts_step); no CAMs of its own."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.artifacts import ModelArtifact
from pipeline.config import Config
from pipeline.fileio import torch_save_atomic
from pipeline.models.vl import PromptLearner
from pipeline.semples.losses import learn_prompts_step
from pipeline.semples.phase import Phase
from pipeline.semples.phases.common import fit_phase, gallery, generator, setup, step_context
from pipeline.semples.training import is_main


def run(cfg: Config, inputs: dict, out: Path) -> dict:
    from pipeline.semples.interpret import interpret_prompts
    lc = cfg.learn_prompts
    device, table, train, gal, k = setup(cfg, inputs, lc)
    model, _, init = generator(cfg, k, inputs["match"], device, "features")
    model = model.eval().requires_grad_(False)  # engine2.py: S in eval mode, under no_grad
    ctx = step_context(cfg, table, device)
    torch.manual_seed(cfg.run.seed)
    prompts = PromptLearner(k, lc.n_prompts, ctx.vl.token_width, init=lc.prompt_init).to(device)

    def step(p, x, y):
        return learn_prompts_step(model, ctx, p(ctx.vl), x, y, lc.lambda_t, lc.mask_eps)

    m = fit_phase(cfg, "learn_prompts", inputs, out, train, prompts, step, gallery(model, gal, table, device))
    m["init"] = init
    if is_main():
        torch_save_atomic({"prompts": prompts.prompts.detach().cpu(), "template": cfg.clip.template,
                           "clip": cfg.clip.model_dump(mode="json"), "classes": list(table.classes[1:])},
                          ModelArtifact(out).prompts)
        if lc.n_interpret_images:
            m["interpret"] = interpret_prompts(Path(out) / "interpret", ctx, prompts.prompts.detach(), gal,
                                               table, lc.n_interpret_images, lc.vocab_topk, device)
    return m


PHASE = Phase(name="learn_prompts", run=run, step=learn_prompts_step, trainable="the class prompts p_k")
