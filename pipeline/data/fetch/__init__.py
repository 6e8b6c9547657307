"""`wsss fetch`: data sets and weights, verified, resumable, offline-friendly.

download.py: retrieval (pooch, a resuming downloader, a local mirror) and checksums;
unpack.py: verified archives unpacked beside the target, completed, marked and renamed
into place; voc.py (VOC 2012 + SBD, SegmentationClassAug) and coco.py (COCO 2014): the
data sets; weights.py: the weight files and the hub caches. ``fetch_dataset`` picks the
data set a config names.

Overrides (tests, private mirrors):
  WSSS_FETCH_BASE_URL  every file is fetched from <base>/<file name> instead of its publisher's URL
  WSSS_FETCH_HASHES    a JSON file {file name: "md5:..." | "sha256:..."} replacing the published checksums
Files whose publisher gives no checksum are recorded (sha256) in `wsss-fetch-registry.json`
beside the downloads on first download and checked against it after.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.data.fetch.coco import coco_remotes, fetch_coco
from pipeline.data.fetch.download import (ENV_BASE_URL, ENV_HASHES, REGISTRY, Fetcher, FetchError, Remote,
                                          ResumableDownloader)
from pipeline.data.fetch.unpack import MARKER, fetched_or_absent
from pipeline.data.fetch.voc import VOC_TRAIN_AUG, build_voc_aug, fetch_voc, sbd_mask, voc_remotes
from pipeline.data.fetch.weights import SWIN_L_URL, fetch_hub_weights, fetch_weights, weight_groups_for, weight_remotes

__all__ = ["ENV_BASE_URL", "ENV_HASHES", "MARKER", "REGISTRY", "SWIN_L_URL", "VOC_TRAIN_AUG", "FetchError", "Fetcher",
           "Remote", "ResumableDownloader", "build_voc_aug", "coco_remotes", "fetch_coco", "fetch_dataset",
           "fetch_hub_weights", "fetch_voc", "fetch_weights", "fetched_or_absent", "sbd_mask", "voc_remotes",
           "weight_groups_for", "weight_remotes"]


def fetch_dataset(data_cfg, dest: Optional[Path] = None, mirror: Optional[Path] = None,
                  base_url: Optional[str] = None, progress: bool = True) -> dict:
    """Fetch the data set a DataCfg names into dest (default data.root)."""
    from filelock import FileLock
    root = Path(dest) if dest else Path(data_cfg.root)
    fetch = {"voc": fetch_voc, "coco": fetch_coco}.get(data_cfg.dataset)
    if fetch is None:
        raise FetchError(f"data.dataset '{data_cfg.dataset}': nothing to fetch "
                         "(only voc and coco are published data sets)")
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f".{root.name}.fetch.lock")):  # one fetch per target at a time
        return fetch(root, mirror, base_url, progress)
