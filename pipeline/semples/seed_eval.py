"""Per-epoch seed evaluation of a training stage, as the official code scores
every epoch: CAMs at scale 1.0 with flip (pipeline.cams.inference.infer_cams,
the same path export_cams uses), the official background-threshold sweep
0.40..0.59 step 0.01 (pipeline.evaluation.scores.sweep_seeds), scored as the official
whole_eval does (it stops at the first threshold that does not improve).

It feeds the seed-mIoU curve of the training history and, with
``select: gt_miou``, the choice of the epoch whose weights the stage keeps.
Either way it scores against ground truth: reports say so."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from pipeline.config import OFFICIAL_SWEEP, Config, seed_eval_split
from pipeline.data.datasets import LabelTable, read_image, read_mask

if TYPE_CHECKING:
    import torch

log = logging.getLogger("wsss")
# what the seed evaluation reads beyond the stage's own section: the training images
# (data.train_split), its split (data.eval_split, else train_split) and the CAM it scores
# (export_cams.cam); with select gt_miou they choose the weights kept
SECTIONS = ('data.train_split', 'data.eval_split', 'export_cams.cam')


def eval_ids(cfg: Config, stage: str, table: LabelTable) -> list[str]:
    """Images of the seed evaluation: the split, or the ids of seed_eval_ids
    (a record matches its id, or the digits after its last '_', so WeakTr's
    COCO list of 12-digit ids matches COCO_train2014_000000057870), capped at
    seed_eval_max_images."""
    tc = getattr(cfg, stage)
    ids = table.ids()
    if tc.seed_eval_ids is not None:
        lines = [ln.split()[0] for ln in Path(tc.seed_eval_ids).read_text().splitlines() if ln.strip()]
        by_suffix = {i.rsplit("_", 1)[-1]: i for i in ids}
        known = set(ids)
        wanted = [Path(w).stem for w in lines]
        missing = [w for w in wanted if w not in known and w not in by_suffix]
        if missing:
            raise ValueError(f"{tc.seed_eval_ids} ({stage}.seed_eval_ids): {len(missing)} of {len(wanted)} ids are "
                             f"not in split '{table.split}' (e.g. {', '.join(missing[:5])})")
        ids = list(dict.fromkeys(w if w in known else by_suffix[w] for w in wanted))
    if tc.seed_eval_max_images:
        ids = ids[: tc.seed_eval_max_images]
    if not ids:
        raise ValueError(f"{stage}: no image to score the seeds on in split '{table.split}'")
    return ids


def seed_miou_eval(cfg: Config, stage: str, prepare_dir: Path,
                   device: torch.device) -> Optional[Callable[[torch.nn.Module, int], dict]]:
    """fit()'s epoch_eval for a training stage: model, epoch -> {"seed_miou",
    "seed_threshold"} as the official sweep reports them (main.py keeps the epoch with the
    best whole_eval mIoU, which stops at the first non-improving threshold) and
    {"seed_best_miou", "seed_best_threshold"} (the sweep's global maximum); None when the
    stage's seed_eval_every is 0."""
    import torch

    from pipeline.cams.inference import infer_cams
    from pipeline.evaluation.scores import best_threshold, official_threshold, sweep_seeds
    from pipeline.utils import progress

    if not getattr(cfg, stage).seed_eval_every:
        return None
    table = LabelTable.from_artifact(prepare_dir, seed_eval_split(cfg, stage))
    ids = [i for i in eval_ids(cfg, stage, table) if table[i].mask]  # folder datasets: GT is optional
    if not ids:
        if getattr(cfg, stage).selects_on_gt():
            raise ValueError(f"{stage}.select: gt_miou needs ground-truth masks in split '{table.split}', "
                             "and it has none")
        log.warning("%s: no ground-truth masks in split '%s': no per-epoch seed mIoU", stage, table.split)
        return None

    def evaluate(model: torch.nn.Module, epoch: int) -> dict:
        def items():
            for i in progress(ids, f"{stage} seed mIoU ({table.split}) after epoch {epoch}", every_s=30):
                r = table[i]
                cams = infer_cams(model, read_image(r.image), r.labels, (1.0,), True, cfg.export_cams.cam, device)
                yield i, cams, r.labels, read_mask(r.mask)

        was_training = model.training
        model.eval()
        try:
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                res = sweep_seeds(items(), OFFICIAL_SWEEP, table.num_classes)
        finally:
            model.train(was_training)
        curve = {t: r["miou"] for t, r in res.items()}
        # the official number (and checkpoint choice): the sweep stops at the first non-improving threshold
        t, miou = official_threshold(curve)
        best_t, best = best_threshold(curve)
        return {"seed_miou": miou, "seed_threshold": t, "seed_best_miou": best, "seed_best_threshold": best_t}

    return evaluate
