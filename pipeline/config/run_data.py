"""Sections run (how and where a run goes) and data (the data set and its splits)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from pipeline.config.base import Section


class RunCfg(Section):
    name: str = "wsss"
    work_dir: Path = Path("runs")
    seed: int = Field(0, ge=0, lt=2 ** 32, description="numpy seeds must be in [0, 2**32)")
    seeds: Optional[list[Annotated[int, Field(ge=0, lt=2 ** 32)]]] = Field(
        None, min_length=1, description="`wsss run` runs the DAG once per seed (run.seed) and writes the spread "
        "report; None = run.seed only. Part of no artifact key")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(8, ge=0, description="DataLoader workers")
    shard_size: int = Field(256, ge=1, description="images per shard of per-image stages")
    processes: int = Field(0, ge=0, description="worker processes of per-image CPU stages; 0 = all cores")
    task_runner: Literal["thread", "dask"] = "thread"
    dask_address: Optional[str] = Field(None, description="scheduler address; None = LocalCluster")
    dask_workers: int = Field(2, ge=1)
    nproc_per_node: int = Field(1, ge=1, description="torchrun processes for training stages")
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    gpus: list[Annotated[int, Field(ge=0)]] = Field(
        [0], min_length=1, description="devices for the GPU stages of a flow run: with one, they queue on it "
        "(independent CPU stages still run beside them); with several, stages whose inputs are done run at "
        "once, each in its own process pinned to its device (CUDA_VISIBLE_DEVICES), queued when none is free. "
        "On a CPU run: how many GPU stages run at once. Part of no artifact key")
    lock_lease_s: float = Field(180.0, gt=0, description="seconds without a heartbeat after which another "
                                "process takes over an artifact's lock (holder's machine lost); all runs "
                                "sharing a store must agree")


class SplitCfg(Section):
    """One split. VOC: ``list`` is an ImageSets file; COCO: ``images`` + ``annotations``;
    folder: ``labels`` (CSV ``image,labels`` or JSON lines), ``images`` (default: data.root),
    optional ``masks`` (ground-truth PNGs ``<id>.png`` for evaluation)."""
    list: Optional[str] = None
    images: Optional[str] = None
    annotations: Optional[str] = None
    masks: Optional[str] = None
    labels: Optional[str] = None


class DataCfg(Section):
    @property
    def all_splits(self) -> list[str]:
        return [s for s in dict.fromkeys([self.train_split, self.val_split, self.eval_split or self.train_split])
                if s is not None]

    dataset: Literal["voc", "coco", "folder"]
    root: Path
    classes: Optional[str] = Field(None, description="folder: class list file under root (.txt: one name a "
                                   "line; .csv: columns name[,prompt][,color]); background is added as 0")
    train_split: str = "train"
    val_split: Optional[str] = Field("val", description="None (folder only): train_segmentation skips validation")
    eval_split: Optional[str] = Field(None, description="split with GT on which seeds/pseudo masks are scored "
                                      "(VOC: train, 1,464 images, while CAMs cover train_aug); None = train_split")
    splits: dict[str, SplitCfg] = Field(default_factory=dict)
    max_images: Optional[int] = Field(None, ge=1, description="cap per split (debugging)")
    coco_render: Literal["official", "largest_first"] = Field(
        "official", description="COCO GT masks from instances. official: as SemPLeS/WeakTr data/parse_coco.py "
        "(annotation order, the first instance to cover a pixel keeps it, crowd regions get their category); "
        "largest_first: larger instances first so small ones stay on top, crowd regions -> 255")
    # in THROUGHPUT, so part of no artifact key: fetched or not, the data are the same
    fetch: bool = Field(False, description="prepare_data first runs `wsss fetch` for this data set "
                        "(voc/coco) into data.root when it is not there yet")

    @model_validator(mode="after")
    def _check_fetch(self):
        if self.fetch and self.dataset == "folder":
            raise ValueError("fetch: only the published data sets (voc, coco) can be fetched")
        return self
