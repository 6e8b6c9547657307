"""What a run shows of its evaluation (pipeline/publish.py Publication): the evaluate stage's
report and per-class table (its record's ``publish`` hook), and the spread over seeds."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.artifacts import EvalArtifact, SpreadArtifact
from pipeline.evaluation.report import EvalReport
from pipeline.publish import Publication, inline_png


def report_publications(path: Path) -> tuple[Publication, ...]:
    """report.md with the per-class chart and the gallery inlined, and the report's per-class
    table (EvalReport.per_class): IoU of seed, pseudo mask and final model where there is
    ground truth (None where not) and the pseudo-mask pixel share."""
    art = EvalArtifact(path)
    report = EvalReport.load(art.report)
    md = art.markdown.read_text()
    for f, title, alt in ((art.per_class_chart, "Per-class IoU chart", "per-class IoU"),
                          (art.gallery, "Gallery", "gallery")):
        if f.exists():
            md += f"\n## {title}\n\n" + inline_png(f, alt)
    gt = (f"seed at t={report.seed.bg_threshold}, pseudo mask, final model on val" if report.seed
          else "no ground truth on the eval split: IoU n/a")
    return (Publication("report", f"evaluation report (CAMs: {report.cam_source}); {path}", markdown=md),
            Publication("per-class-iou", f"per-class IoU (%): {gt}; pixel_share: fraction of pseudo-mask pixels",
                        table=report.per_class()))


def spread_publication(path: Path, seeds: Sequence[int]) -> Publication:
    """spread.md with the spread chart."""
    art = SpreadArtifact(path)
    chart = inline_png(art.chart, "spread") if art.chart.exists() else f"File: `{art.chart}`\n"
    return Publication("", f"spread over seeds {list(seeds)}; {path}", markdown=art.markdown.read_text() + "\n" + chart)
