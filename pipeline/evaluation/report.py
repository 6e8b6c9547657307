"""The evaluate report as a type, and the pictures and Markdown of the reports.

``EvalReport`` is evaluate's report.json: evaluate writes it, the Prefect flow
publishes it and `wsss compare` reads it, all through these fields (no raw
keys). A split without ground-truth masks (a folder dataset) has no ``seed``,
``seed_sweep`` or ``pseudo_mask`` section: only pixel shares, the gallery and
the final model (scored when its val split has ground truth); readers show
n/a for what a report lacks. Unknown keys are kept (extra="allow"), so a
report written by an older or newer evaluate loads and writes back unchanged.

Also here: the Markdown of report.md, the per-class table the flow publishes,
and the figures of evaluate and train_segmentation (pipeline.plots holds the
low-level drawing, imported when a figure is drawn).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.artifacts import EvalArtifact
from pipeline.config import Config, cam_labels, seed_eval_split
from pipeline.evaluation.protocol import Protocol, protocol_markdown
from pipeline.fileio import write_json_atomic

REPORT = EvalArtifact.report.name
UNCERTAIN = "uncertain (255)"  # the pixel-share key of the uncertain (255) pixels



def selection_label(cfg: Config, stage: str) -> str:
    """How a training stage picks the weights it keeps, in words."""
    tcfg = getattr(cfg, stage)
    if tcfg.imported_from():
        return (f"imported from {tcfg.imported_from()} (WeakTr's released checkpoint_best_mIoU.pth "
                "was chosen by its authors on ground truth)")
    if tcfg.selects_on_gt():
        return f"best epoch by seed mIoU on {seed_eval_split(cfg, stage)} (uses ground truth)"
    return "last epoch (no pixel labels)"


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class Scores(_Part):
    """Scores of label maps against ground truth (pipeline.evaluation.metrics), in percent;
    a class in neither GT nor prediction has IoU None."""
    miou: float
    per_class_iou: dict[str, Optional[float]]
    pixel_acc: Optional[float] = None
    fg_precision: Optional[float] = None
    fg_recall: Optional[float] = None
    # from the same confusion matrix (pipeline.metrics.class_precision_recall); None: no denominator
    per_class_precision: Optional[dict[str, Optional[float]]] = None
    per_class_recall: Optional[dict[str, Optional[float]]] = None


class SeedScores(Scores):
    bg_threshold: float


class SeedSweep(_Part):
    """The official background-threshold sweep. ``best_*``: the global maximum
    (chosen with ground truth). ``official_*`` (optional): the threshold at
    which the official evaluation's early stopping ends the sweep."""
    uses_ground_truth: bool = True
    note: str
    best_threshold: float
    best_miou: float
    curve: dict[float, float]
    at_best: Scores
    official_threshold: Optional[float] = None
    official_miou: Optional[float] = None
    official_rule: Optional[str] = None


class FinalModel(_Part):
    """train_segmentation's val result, or why there is none."""
    available: bool
    reason: Optional[str] = None
    miou: Optional[float] = None
    per_class_iou: Optional[dict[str, Optional[float]]] = None
    per_class_precision: Optional[dict[str, Optional[float]]] = None
    per_class_recall: Optional[dict[str, Optional[float]]] = None
    source: Optional[str] = None
    label: Optional[str] = None
    selected_on_ground_truth: Optional[bool] = None


class EnsembleScores(_Part):
    """The ensemble stage's val result: the blend and each model alone (same images, same metric)."""
    miou: float
    per_class_iou: dict[str, Optional[float]]
    label: str
    weights: list[float]
    members: dict[str, float]  # model -> its own val mIoU (argmax of its probabilities, single-scale)
    source: str


class Selection(_Part):
    """How the training stages kept their weights: in words, one extra field per phase that makes
    CAMs (pipeline.config.phase_sections); uses_ground_truth None: not known (imported CAMs or
    masks)."""
    uses_ground_truth: Optional[bool] = None
    note: str

    def per_phase(self) -> dict[str, str]:
        return dict(self.model_extra or {})


class EvalReport(_Part):
    """evaluate's report.json."""
    eval_split: str
    num_images: int  # images of the split in the CAM export (no CAMs: with an imported pseudo mask)
    num_images_with_gt: int  # of those, the ones with a ground-truth mask: all scores are on these
    cam_split: str
    cam_source: str  # the training stage whose mask generator made the CAMs, or "imported: <folder>, <format>"
    mask_source: Optional[str] = None  # imported pseudo masks: "imported: <folder>" (their route is "imported")
    selection: Selection
    pseudo_mask_pixel_shares: dict[str, float]  # class (and UNCERTAIN) -> share of all pseudo-mask pixels
    final_model: FinalModel
    # only with ground truth (num_images_with_gt > 0):
    seed: Optional[SeedScores] = None
    seed_sweep: Optional[SeedSweep] = None
    pseudo_mask: Optional[Scores] = None
    # every pseudo-mask route of the run scored side by side: {route (e.g. "sam", "crf"): scores};
    # trained_route is the one train_segmentation trains on (its scores are also pseudo_mask)
    pseudo_mask_routes: Optional[dict[str, Scores]] = None
    trained_route: Optional[str] = None
    ensemble: Optional[EnsembleScores] = None  # with ensemble.routes: the blended final models
    protocol: Optional[Protocol] = None  # how every number above was made (pipeline.protocol)
    # wall time, device, GPU-hours, peak memory of every upstream stage (pipeline.resources.cost_row)
    stage_costs: Optional[list[dict]] = None

    def extra_routes(self) -> dict[str, Scores]:
        """The routes beside the trained one."""
        return {k: v for k, v in (self.pseudo_mask_routes or {}).items() if k != self.trained_route}

    @property
    def final_per_class(self) -> dict[str, Optional[float]]:
        return (self.final_model.per_class_iou or {}) if self.final_model.available else {}

    @property
    def final_miou(self) -> Optional[float]:
        return self.final_model.miou if self.final_model.available else None

    def classes(self) -> list[str]:
        """The dataset's class names (the pixel shares name every class of the label table)."""
        return [c for c in self.pseudo_mask_pixel_shares if c != UNCERTAIN]

    def per_class(self) -> list[dict]:
        """One row per class: seed, pseudo-mask and final (val) IoU (None where the report has none)
        and the class's share of the pseudo-mask pixels ("pixel_share"); without seed scores (no
        ground truth) the rows are the pixel shares, the uncertain (255) pixels included."""
        seed = self.seed.per_class_iou if self.seed else {}
        pseudo = self.pseudo_mask.per_class_iou if self.pseudo_mask else {}
        final = self.final_per_class
        extra = self.extra_routes()
        pr = {k: (p.per_class_precision or {}, p.per_class_recall or {}) for k, p in (
            ("seed", self.seed), ("pseudo_mask", self.pseudo_mask),
            ("final_val", self.final_model if self.final_model.available else None)) if p is not None}
        return [{"class": c, "seed": seed.get(c), "pseudo_mask": pseudo.get(c),
                 **{f"pseudo_mask_{k}": v.per_class_iou.get(c) for k, v in extra.items()},
                 "final_val": final.get(c), "pixel_share": self.pseudo_mask_pixel_shares.get(c),
                 **{f"{k}_{w}": d.get(c) for k, (p, r) in pr.items() for w, d in (("precision", p), ("recall", r))}}
                for c in self.classes() + ([] if self.pseudo_mask else [UNCERTAIN])]

    def save(self, path: Path) -> None:
        write_json_atomic(Path(path), self.model_dump(mode="json", exclude_none=True))

    @classmethod
    def load(cls, path: Path) -> "EvalReport":
        """report.json of an evaluate artifact; ValueError naming the file if it is not one."""
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as e:
            raise ValueError(f"{path}: not an evaluate report ({e})") from None
        except ValidationError as e:
            what = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'file'}: {x['msg']}" for x in e.errors())
            raise ValueError(f"{path}: not an evaluate report ({what})") from None


# ------------------------------------------------------------------ Markdown
def fmt(v: Optional[float]) -> str:
    """A percentage with two decimals, or n/a."""
    return "n/a" if v is None else f"{v:.2f}"


def _ensemble_rows(r: EvalReport) -> list[str]:
    """Table rows of each ensemble model alone and of the blend (none without an ensemble)."""
    e = r.ensemble
    if e is None:
        return []
    return ([f"| {name} alone (ensemble stage's scoring) | val | {m:.2f} | | |" for name, m in e.members.items()]
            + [f"| {e.label} | val | {e.miou:.2f} | | |"])


def report_markdown(r: EvalReport) -> str:
    """report.md: the scores table (or, without ground truth, what there is),
    the checkpoint selection and the pseudo-mask pixel shares."""
    final = r.final_model
    fm = f"{final.miou:.2f}" if final.available else f"n/a ({final.reason})"
    cell = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    how = f" ({final.label})" if final.available else ""
    own = r.cam_source in cam_labels()
    with_what = "CAMs" if own or r.cam_source.startswith("imported") else "pseudo masks"
    lines = [f"# Evaluation: {r.eval_split} ({r.num_images} images with {with_what}, "
             f"{r.num_images_with_gt} with ground truth)", "", cam_source_line(r), ""]
    if r.mask_source:
        lines += [f"Pseudo masks {r.mask_source} (route `{r.trained_route or 'imported'}`, trained on).", ""]
    if r.pseudo_mask:
        sw, split = r.seed_sweep, r.eval_split
        row = lambda what, s, where=split: (f"| {what} | {where} | {s.miou:.2f} | "  # noqa: E731
                                            f"{s.fg_precision:.2f} | {s.fg_recall:.2f} |")
        lines += ["| what | split | mIoU | fg precision | fg recall |", "|---|---|---|---|---|"]
        if r.seed and sw:
            lines += [row(f"seed, bg threshold {r.seed.bg_threshold}", r.seed)]
            if sw.official_threshold is not None and sw.official_miou is not None:
                lines += [f"| seed, official sweep threshold {sw.official_threshold} (stops at the first "
                          f"non-improving threshold; uses GT) | {split} | {sw.official_miou:.2f} | | |"]
            lines += [f"| seed, best threshold {sw.best_threshold} (global maximum of the sweep, uses GT) | {split} | "
                      f"{sw.best_miou:.2f} | {sw.at_best.fg_precision:.2f} | {sw.at_best.fg_recall:.2f} |"]
        lines += [row("pseudo mask" + (f" ({r.trained_route}, trained on)" if r.trained_route else ""), r.pseudo_mask)]
        extra = r.extra_routes()
        lines += [row(f"pseudo mask ({k})", s) for k, s in extra.items()]
        lines += [f"| final segmentation model{how} | val | {fm} | | |"]
        lines += _ensemble_rows(r) + [""]
        if sw and sw.official_rule:
            lines += [f"Official sweep rule: {sw.official_rule}.", ""]
        if sw:
            lines += [f"Note: {sw.note}.", "",
                      "Threshold sweep: " + ", ".join(f"{t}: {m:.2f}" for t, m in sw.curve.items()), ""]
        lines += ["## Per-class IoU", "", "| class | seed | pseudo mask | " + "".join(f"{k} | " for k in extra)
                  + "final (val) |", "|---" * (4 + len(extra)) + "|"]
        lines += [f"| {p['class']} | {cell(p['seed'])} | {cell(p['pseudo_mask'])} | "
                  + "".join(f"{cell(p[f'pseudo_mask_{k}'])} | " for k in extra) + f"{cell(p['final_val'])} |"
                  for p in r.per_class()]
    else:
        lines += ["No ground-truth masks for this split: no seed or pseudo-mask scores; "
                  "look at gallery.png and the pixel shares below.", "", f"Final segmentation model{how} (val): {fm}"]
        lines += [row.replace("| val |", "(val):") for row in _ensemble_rows(r)]
    sel = r.selection
    lines += ["", "Checkpoint selection: " + "; ".join(f"{s}: {label}" for s, label in sel.per_phase().items())
              + f". Note: {sel.note}."]
    if final.selected_on_ground_truth:
        lines += ["", "Note: the final model's checkpoint was selected by val mIoU: the number is chosen on the "
                  "ground truth it is reported on (as FMA-WSSS reports), not a held-out result."]
    lines += ["", *precision_recall_markdown(r)]
    lines += ["", "## Pseudo-mask pixel shares (% of all pixels)", "", "| class | share |", "|---|---|"]
    lines += [f"| {c} | {100 * v:.2f} |" for c, v in r.pseudo_mask_pixel_shares.items()]
    if r.protocol:
        lines = lines[:2] + protocol_markdown(r.protocol) + lines[2:]
    if r.stage_costs:
        from pipeline.resources import cost_markdown
        lines += ["", "## Time and cost per stage (upstream of this report)", "", *cost_markdown(r.stage_costs)]
    return "\n".join(lines) + "\n"


def cam_source_line(r: EvalReport) -> str:
    labels = cam_labels()
    if r.cam_source in labels:
        return f"CAMs from the mask generator of stage `{r.cam_source}` ({labels[r.cam_source]})."
    if r.cam_source.startswith("imported"):
        return f"CAMs {r.cam_source} (scored by this pipeline's protocol)."
    return f"CAMs: {r.cam_source}."


def scored_parts(r: EvalReport) -> dict[str, Scores | FinalModel]:
    """Every scored part of a report: seed, seed at the sweep's best threshold, each route, final model."""
    parts: dict = {}
    if r.seed:
        parts[f"seed (t={r.seed.bg_threshold})"] = r.seed
    if r.seed_sweep:
        parts[f"seed (best t={r.seed_sweep.best_threshold}, GT-chosen)"] = r.seed_sweep.at_best
    for k, v in (r.pseudo_mask_routes or ({r.trained_route or "pseudo mask": r.pseudo_mask} if r.pseudo_mask
                                          else {})).items():
        parts[f"pseudo mask ({k})"] = v
    if r.final_model.available:
        parts["final model (val)"] = r.final_model
    return parts


def precision_recall_markdown(r: EvalReport) -> list[str]:
    """Per-class IoU / precision / recall of every scored part, one column per part."""
    parts = {k: v for k, v in scored_parts(r).items() if v.per_class_precision is not None}
    if not parts:
        return []
    cell = lambda d, c: fmt(d.get(c)) if d else "n/a"  # noqa: E731
    lines = ["## Per-class IoU / precision / recall", "",
             "| class | " + " | ".join(parts) + " |", "|---" * (len(parts) + 1) + "|"]
    for c in r.classes():
        lines.append(f"| {c} | " + " | ".join(
            f"{cell(p.per_class_iou, c)} / {cell(p.per_class_precision, c)} / {cell(p.per_class_recall, c)}"
            for p in parts.values()) + " |")
    return lines


# ------------------------------------------------------------------ figures
def save_report_bars(path: Path, r: EvalReport) -> None:
    """evaluate's per-class IoU chart: seed (fixed and best threshold), pseudo mask, final model."""
    from pipeline.plots import save_per_class_bars
    if not r.pseudo_mask:
        return
    series = {}
    if r.seed and r.seed_sweep:
        series = {f"seed (t={r.seed.bg_threshold})": r.seed.per_class_iou,
                  f"seed (best t={r.seed_sweep.best_threshold}, GT-chosen)": r.seed_sweep.at_best.per_class_iou}
    series["pseudo mask" + (f" ({r.trained_route}, trained on)" if r.trained_route else "")] = \
        r.pseudo_mask.per_class_iou
    series |= {f"pseudo mask ({k})": s.per_class_iou for k, s in r.extra_routes().items()}
    if r.final_model.available:
        series["final model (val)"] = {c: r.final_per_class.get(c) for c in r.pseudo_mask.per_class_iou}
    save_per_class_bars(path, series, f"per-class IoU, {r.eval_split} ({r.num_images_with_gt} images)")


def save_eval_gallery(path: Path, rows: list, labels: list[str], bg_threshold: float, pal=None) -> None:
    """evaluate's gallery: image | seed | pseudo mask | ground truth (None: blank) per row."""
    from pipeline.plots import save_grid
    if rows:
        save_grid(path, rows, titles=["image", f"seed (t={bg_threshold})", "pseudo mask", "ground truth"],
                  row_labels=labels, pal=pal)


def save_prediction_gallery(path: Path, rows: list, labels: list[str], pal=None) -> None:
    """train_segmentation's gallery: image | prediction | ground truth (None: blank) per row."""
    from pipeline.plots import save_grid
    if rows:
        save_grid(path, rows, titles=["image", "prediction", "ground truth"], row_labels=labels, pal=pal)


def save_val_figures(out: Path, history: list[dict], metrics: dict, model: str, selection: str) -> None:
    """train_segmentation's val_curve.png and per_class_iou.png (``metrics``: of val_metrics.json)."""
    from pipeline.plots import save_per_class_bars
    save_val_curve(Path(out) / "val_curve.png", history, metrics["iter"], selection)
    save_per_class_bars(Path(out) / "per_class_iou.png", {f"{model} val": metrics["per_class_iou"]},
                        f"{model}: val mIoU {metrics['miou']:.1f}")


def save_val_curve(path: Path, history: list[dict], final_iter: int, selection: str) -> None:
    """Val mIoU per validation of train_segmentation, the last and the best iteration marked."""
    from pipeline.plots import plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([h["iter"] for h in history], [h["mIoU"] for h in history], marker="o", label="val mIoU")
    last = history[-1]
    ax.scatter([last["iter"]], [last["mIoU"]], s=80, facecolors="none", edgecolors="k",
               label=f"last iteration ({last['mIoU']:.1f})", zorder=3)
    best = max(history, key=lambda h: (h["mIoU"], -h["iter"]))
    ax.scatter([best["iter"]], [best["mIoU"]], marker="*", s=120, color="tab:red", zorder=4,
               label=f"best on val GT ({best['mIoU']:.1f})" + (", final model" if selection != "last" else ""))
    ax.set_xlabel("iteration")
    ax.set_ylabel("val mIoU")
    ax.set_title(f"final model: iteration {final_iter}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

