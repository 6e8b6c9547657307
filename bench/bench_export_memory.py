"""(c) Peak RSS of export_cams over 100 vs 1000 synthetic images: the export
streams bounded batches (loader prefetch, one batch on the device, the
writer queue), so the peak must not grow with the split.

Each run is a fresh process (ru_maxrss is a high-water mark) running the
real stage (run_shard + finalize) with a random-init deit_tiny mask generator
on synthetic 80x64 JPEGs (smooth noise, 1-3 labels; scale 1.0 + flip). Target: growth <= 20%.
    python bench/bench_export_memory.py
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(n: int, work: str) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    from PIL import Image

    from pipeline.config import load_config
    from pipeline.data.datasets import LabelTable, Record
    from pipeline.models.mask_generator import build_mask_generator, save_mask_generator
    from stages.export_cams import STAGE as export_cams

    torch.set_num_threads(1)
    work = Path(work)
    cfg = load_config(ROOT / "configs/voc-smoke.yaml", overrides={
        "run": {"work_dir": str(work / "runs"), "device": "cpu"},
        "export_cams": {"scales": [1.0], "flip": True, "gallery_size": 4}})
    prep, refine, out = work / "prep", work / "refine", work / "out"
    for d in (prep, refine, out):
        d.mkdir()
    rng = np.random.default_rng(0)
    base = [np.asarray(Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((80, 64),
                                                                                      Image.BICUBIC))
            for _ in range(8)]
    records = []
    for i in range(n):
        path = work / f"img_{i:05d}.jpg"
        Image.fromarray(base[i % 8]).save(path)
        labels = sorted(rng.choice(np.arange(1, 21), size=1 + i % 3, replace=False).tolist())
        records.append(Record(f"img_{i:05d}", str(path), None, 64, 80, labels))
    LabelTable("voc", "train", records).save(prep / "labels_train.json")
    torch.manual_seed(0)
    save_mask_generator(build_mask_generator(cfg.mask_generator, 20, load_weights=False), refine / "model.pt",
                        cfg.mask_generator, 20)
    inputs = {"prepare_data": prep, "refine": refine}
    t = time.perf_counter()
    metrics = export_cams.run(cfg, inputs, out)
    print(json.dumps({"n": n, "seconds": time.perf_counter() - t, "images": metrics["images"],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared)")
    peaks = {}
    for n in (100, 1000):
        with tempfile.TemporaryDirectory() as d:
            res = subprocess.run([sys.executable, __file__, "--child", str(n), d], capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(res.stderr)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            peaks[n] = r["peak_rss_mb"]
            print(f"export_cams over {n} images: peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"({r['seconds']:.0f} s, {n / r['seconds']:.1f} images/s)")
    print(f"growth 100 -> 1000 images: {100 * (peaks[1000] / peaks[100] - 1):+.1f}%  (target <= 20%)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), sys.argv[3])
    else:
        main()
