"""COCO 2014 for `wsss fetch coco`: train/val images and the instances annotations."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from pipeline.data.fetch.download import Fetcher, FetchError, Remote
from pipeline.data.fetch.unpack import MARKER, build_beside, fresh_target, unzip

log = logging.getLogger("wsss")


# md5s as published by COCO's S3 bucket (single-part ETag) and used by LAVIS, PaddleSeg & co.
def coco_remotes() -> list[Remote]:
    return [Remote("train2014.zip", "http://images.cocodataset.org/zips/train2014.zip",
                   "md5:0da8c0bd3d6becc4dcb32757491aca88"),
            Remote("val2014.zip", "http://images.cocodataset.org/zips/val2014.zip",
                   "md5:a3d79f5ed8d289b7a7554ce06a5782b3"),
            Remote("annotations_trainval2014.zip",
                   "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                   "md5:0a379cfc70b0e71301e0f377548639bd")]


def fetch_coco(root: Path, mirror: Optional[Path] = None, base_url: Optional[str] = None,
               progress: bool = True) -> dict:
    """COCO 2014 train/val images and instances annotations -> `root` (train2014/, val2014/,
    annotations/). Archives are kept in <root's parent>/wsss-downloads."""
    root = Path(root)
    if fresh_target(root):
        return json.loads((root / MARKER).read_text())
    fetcher = Fetcher(root.parent / "wsss-downloads", mirror, base_url, progress)
    remotes = coco_remotes()
    files = fetcher.fetch(remotes)
    info = {"dataset": "coco", "files": {r.name: fetcher.expected_hash(r) or "" for r in remotes}}

    def build(tmp: Path) -> Path:
        tree = tmp / "coco"
        for r in remotes:
            log.info("unpacking %s", files[r.name])
            unzip(files[r.name], tree)
        for need in ("train2014", "val2014", "annotations/instances_train2014.json",
                     "annotations/instances_val2014.json"):
            if not (tree / need).exists():
                raise FetchError(f"the COCO archives lack {need}")
        return tree

    build_beside(root, build, info)
    log.info("COCO ready in %s", root)
    return info
