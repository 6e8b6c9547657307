"""Phase 1, Segment-Label Matching: S's CAM head learns L_match from the warm start
(pipeline.semples.losses.match_step)."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.semples.losses import match_step
from pipeline.semples.phase import Phase
from pipeline.semples.phases.common import finish, fit_phase, gallery, generator, set_trainable, setup, step_context


def run(cfg: Config, inputs: dict, out: Path) -> dict:
    mc = cfg.match
    device, table, train, gal, k = setup(cfg, inputs, mc)
    model, mcfg, init = generator(cfg, k, inputs["train_cam"], device, "features")
    set_trainable(model, mc.trainable)
    ctx = step_context(cfg, table, device)

    def step(s, x, y):
        return match_step(s, ctx, x, y, mc.lambda_b, mc.mask_eps)

    m = fit_phase(cfg, "match", inputs, out, train, model, step, gallery(model, gal, table, device))
    return finish(model, out, cfg, mcfg, k, "match", m | {"init": init})


PHASE = Phase(name="match", run=run, step=match_step, trainable="match.trainable: head (official) or all")
