"""The weight files of `wsss fetch weights` (WeakTr, SAM, Swin-L, ResNet-101), by what needs
them, and CLIP / DeiT through open_clip's and timm's own caches."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from pipeline.data.fetch.download import Fetcher, FetchError, Remote

log = logging.getLogger("wsss")


def _gdrive(file_id: str) -> str:
    # the direct-download form of a Google Drive share link (confirm=t skips the virus-scan page)
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"



SWIN_L_URL = ("https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/swin/"
              "swin_large_patch4_window12_384_22k_20220412-6580f57d.pth")


def weight_remotes() -> dict[str, list[Remote]]:
    """Weight files by what needs them. WeakTr: hustvl/WeakTr README (Google Drive, DeiT-S CAM
    checkpoints); SAM: segment-anything README (the file-name suffix is the md5 prefix; the full
    md5s are the ones in wide use); Swin-L 22k: the mmseg URL configs/*-full.yaml name (mmengine's
    sha256 prefix in the name); ResNet-101 for DeepLab-v2: torchvision's IMAGENET1K_V1 file."""
    from torchvision.models import ResNet101_Weights

    from pipeline.weights import SAM_URLS as SAM
    rn_url = ResNet101_Weights.IMAGENET1K_V1.url
    return {
        "weaktr_voc": [Remote("weaktr_voc_deit_small_checkpoint_best_mIoU.pth",
                              _gdrive("1uUHGLIDFm49Gh41Ddc8_T93-bRWnJzeF"),
                              key="train_cam.init_checkpoint", note="voc configs")],
        "weaktr_coco": [Remote("weaktr_coco_deit_small_checkpoint_best_mIoU.pth",
                               _gdrive("1Q5UdcGCHFitSJXljZmTA4USKPpyZIVDw"),
                               key="train_cam.init_checkpoint", note="coco configs")],
        **{f"sam_{v}": [Remote(SAM[v].rsplit("/", 1)[1], SAM[v], md5, key="sam.checkpoint", note=note)]
           for v, md5, note in (("vit_h", "md5:4b8939a88964f0f4ff5f5b2642c598a6", "SAM ViT-H, the one FMA-WSSS uses"),
                                ("vit_l", "md5:0b3195507c641ddb6910d2bb5adee89c", "SAM ViT-L"),
                                ("vit_b", "md5:01ec64d29a2fca3f0661936605ae66f8", "SAM ViT-B"))},
        "swin_l": [Remote(SWIN_L_URL.rsplit("/", 1)[1], SWIN_L_URL, sha256_prefix="6580f57d",
                          key="train_segmentation.pretrained", note="mask2former swin_l (voc-full, coco-full)")],
        "resnet101": [Remote("resnet101_imagenet.pth", rn_url, sha256_prefix=rn_url.rsplit("-", 1)[1].split(".")[0],
                             key="train_segmentation.pretrained",
                             note="deeplabv2 configs (pretrained_format: pytorch)")],
    }


def weight_groups_for(cfg) -> list[str]:
    """The weight groups a config needs (all of them without a config)."""
    if cfg is None:
        return list(weight_remotes())
    groups = ["weaktr_coco" if cfg.data.dataset == "coco" else "weaktr_voc", f"sam_{cfg.sam.model_type}"]
    ts = cfg.train_segmentation
    if ts.model == "mask2former" and ts.backbone == "swin_l":
        groups.append("swin_l")
    elif ts.model == "deeplabv2":
        groups.append("resnet101")
    return groups


def fetch_hub_weights(weights: Optional[list] = None) -> list[str]:
    """CLIP and DeiT through open_clip's and timm's own download functions, into the caches the
    stages read: the given hub weights (pipeline/weights.py HubWeight, as the preflight resolves
    them for a config's stages), or the official CLIP and DeiT-S. A config that names local
    files (or no pretrained weights) needs nothing from the hubs."""
    from pipeline.weights import clip_weight, timm_weight
    if weights is None:
        weights = [clip_weight("ViT-B-32-quickgelu", "openai"), timm_weight("deit_small_patch16_224")]
    done = []
    for w in weights:
        w.fetch()
        done.append(f"{w.what} ({w.key}): in {w.cache}")
    return done


def fetch_weights(dest: Path, cfg=None, mirror: Optional[Path] = None, base_url: Optional[str] = None,
                  progress: bool = True, hub: bool = True,
                  hub_weights: Optional[list] = None) -> list[tuple[str, Path, str]]:
    """Download the weight files a config needs (all without one) into dest; return
    (config key, path, note) for each. hub: also CLIP/DeiT into open_clip's/timm's caches
    (``hub_weights``: the config's, as the preflight lists them; None: the official ones)."""
    groups = weight_remotes()
    remotes = [r for g in weight_groups_for(cfg) for r in groups[g]]
    errors, files = [], {}
    try:
        files = Fetcher(Path(dest), mirror, base_url, progress).fetch(remotes)
    except FetchError as e:
        errors.append(str(e))
    if hub and mirror:
        log.info("CLIP/DeiT come from the hubs, not from a mirror: offline, set clip.pretrained and "
                 "mask_generator.pretrained to local files (or copy the open_clip/timm caches)")
    elif hub:
        try:
            for line in fetch_hub_weights(hub_weights):
                log.info(line)
        except Exception as e:  # noqa: BLE001 - any hub/network failure: say what to set instead
            errors.append(f"CLIP/DeiT through open_clip/timm failed ({e}); offline, set clip.pretrained and "
                          "mask_generator.pretrained to local files, or pass --no-hub")
    if errors:
        raise FetchError("\n".join(errors))
    return [(r.key, files[r.name], r.note) for r in remotes]
