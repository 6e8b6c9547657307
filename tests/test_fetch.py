"""`wsss fetch` without internet: a loopback HTTP server (127.0.0.1, a thread, shut down after
each test and by a timer) serves small VOC/SBD/COCO-shaped archives built here from the vendored
tiny data; the fetch is pointed at it with WSSS_FETCH_BASE_URL and told the archives' checksums
with WSSS_FETCH_HASHES (the documented overrides)."""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy.io import savemat
from typer.testing import CliRunner

from flows.cli import app

ROOT = Path(__file__).resolve().parents[1]
VOC_TINY = ROOT / "data/voc-tiny"
COCO_TINY = ROOT / "data/coco-tiny"
VOC_TAR, SBD_TGZ = "VOCtrainval_11-May-2012.tar", "benchmark.tgz"


# ------------------------------------------------------------------ archives
def _tar(files: dict[str, bytes], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _mat(mask: np.ndarray) -> bytes:
    """An SBD cls/*.mat: struct GTcls with Segmentation, Boundaries, CategoriesPresent."""
    buf = io.BytesIO()
    savemat(buf, {"GTcls": {"Segmentation": mask.astype(np.uint8), "Boundaries": np.zeros((20, 1), object),
                            "CategoriesPresent": np.unique(mask[(mask > 0) & (mask < 255)]).astype(np.uint8)}})
    return buf.getvalue()


def _mask(id_: str) -> np.ndarray:
    return np.asarray(Image.open(VOC_TINY / "SegmentationClass" / f"{id_}.png"))


IDS = (VOC_TINY / "ImageSets/Segmentation/train.txt").read_text().split()[:7]
VOC_TRAIN, VOC_VAL, SBD_ONLY = IDS[:2], IDS[2:4], IDS[4:7]
SBD_TRAIN = [IDS[0], IDS[2], SBD_ONLY[0], SBD_ONLY[1]]  # IDS[0] also VOC train, IDS[2] VOC val
SBD_VAL = [SBD_ONLY[2]]
TRAIN_AUG = sorted(set(SBD_TRAIN + SBD_VAL + VOC_TRAIN) - set(VOC_VAL))  # 5 ids


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    d = "VOCdevkit/VOC2012/"
    voc = {f"{d}JPEGImages/{i}.jpg": (VOC_TINY / "JPEGImages" / f"{i}.jpg").read_bytes() for i in IDS}
    voc.update({f"{d}SegmentationClass/{i}.png": (VOC_TINY / "SegmentationClass" / f"{i}.png").read_bytes()
                for i in VOC_TRAIN + VOC_VAL})
    voc[f"{d}ImageSets/Segmentation/train.txt"] = "".join(f"{i}\n" for i in VOC_TRAIN).encode()
    voc[f"{d}ImageSets/Segmentation/val.txt"] = "".join(f"{i}\n" for i in VOC_VAL).encode()
    b = "benchmark_RELEASE/dataset/"
    sbd = {f"{b}cls/{i}.mat": _mat(np.zeros_like(_mask(i)) if i == IDS[0] else _mask(i))  # VOC's PNG must win for IDS[0]
           for i in SBD_TRAIN + SBD_VAL}
    sbd[f"{b}train.txt"] = "".join(f"{i}\n" for i in SBD_TRAIN).encode()
    sbd[f"{b}val.txt"] = "".join(f"{i}\n" for i in SBD_VAL).encode()
    sbd[f"{b}img/{SBD_ONLY[0]}.jpg"] = b"not extracted"
    out = {VOC_TAR: _tar(voc), SBD_TGZ: _tar(sbd, gz=True)}
    # COCO 2014 shape from coco-tiny: 4 annotated + 1 unannotated image per split
    for split, src in (("train", "train2017"), ("val", "val2017")):
        js = json.loads((COCO_TINY / f"annotations/instances_{src}.json").read_text())
        with_ann = sorted({a["image_id"] for a in js["annotations"]})[:4]
        without = [im["id"] for im in js["images"] if im["id"] not in {a["image_id"] for a in js["annotations"]}][:1]
        keep = set(with_ann + without)
        js["images"] = [im for im in js["images"] if im["id"] in keep]
        js["annotations"] = [a for a in js["annotations"] if a["image_id"] in keep]
        out[f"{split}2014.zip"] = _zip({f"{split}2014/{im['file_name']}": (COCO_TINY / "images" / src / im["file_name"]).read_bytes()
                                        for im in js["images"]})
        out.setdefault("ann", {})[f"annotations/instances_{split}2014.json"] = json.dumps(js).encode()
    out["annotations_trainval2014.zip"] = _zip(out.pop("ann"))
    return out


# ------------------------------------------------------------------ loopback server
class _Server:
    """Serves `files` with HTTP Range support; `drop_once` names files whose first GET sends
    half the bytes and closes the connection. Records every request (path, Range header)."""

    def __init__(self, files: dict[str, bytes], drop_once: set[str] = frozenset()):
        self.files, self.drop_once, self.requests = files, set(drop_once), []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                srv.requests.append((name, rng))
                data = srv.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if name in srv.drop_once:
                    srv.drop_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.timer = threading.Timer(120, self.httpd.shutdown)  # stops by itself if a test hangs

    def __enter__(self):
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def env(monkeypatch, tmp_path, archives):
    """Checksums of the test archives as the override file; no proxy for the loopback host."""
    hashes = tmp_path / "hashes.json"
    hashes.write_text(json.dumps({n: f"md5:{hashlib.md5(b).hexdigest()}" for n, b in archives.items()}))
    monkeypatch.setenv("WSSS_FETCH_HASHES", str(hashes))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("WSSS_FETCH_BASE_URL", raising=False)
    return monkeypatch


def _voc_config(tmp_path: Path, root: Path, **data) -> Path:
    cfg = tmp_path / "voc-fetched.yaml"
    cfg.write_text(yaml.safe_dump({"_base_": str(ROOT / "configs/voc-smoke.yaml"),
                                   "run": {"work_dir": str(tmp_path / "runs")},
                                   "data": {"root": str(root), "train_split": "train_aug", "val_split": "val",
                                            "eval_split": "train", **data}}))
    return cfg


def _coco_config(tmp_path: Path, root: Path) -> Path:
    cfg = tmp_path / "coco-fetched.yaml"
    cfg.write_text(yaml.safe_dump({"_base_": [str(ROOT / "configs/voc-smoke.yaml"), str(ROOT / "configs/_base_/coco.yaml")],
                                   "run": {"work_dir": str(tmp_path / "runs")}, "data": {"root": str(root)}}))
    return cfg


def _cli(*args) -> "object":
    return CliRunner().invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------ tests
def test_voc_fetch_resumes_converts_and_passes_data_check(env, tmp_path, archives):
    root = tmp_path / "data/VOCdevkit/VOC2012"
    cfg = _voc_config(tmp_path, root)
    part = tmp_path / "data/VOCdevkit/wsss-downloads" / f"{SBD_TGZ}.part"  # left by an earlier, killed run
    part.parent.mkdir(parents=True)
    part.write_bytes(archives[SBD_TGZ][:1000])
    with _Server({VOC_TAR: archives[VOC_TAR], SBD_TGZ: archives[SBD_TGZ]}, drop_once={VOC_TAR}) as srv:
        env.setenv("WSSS_FETCH_BASE_URL", srv.url)
        res = _cli("fetch", "voc", "--config", cfg)
        assert res.exit_code == 0, res.output
        # the dropped transfer was resumed with a Range request, not restarted
        assert (VOC_TAR, None) in srv.requests
        assert any(n == VOC_TAR and r and r != "bytes=0-" for n, r in srv.requests), srv.requests
        assert srv.requests.count((SBD_TGZ, "bytes=1000-")) == 1 and (SBD_TGZ, None) not in srv.requests
        n_requests = len(srv.requests)
        again = _cli("fetch", "voc", "--config", cfg)  # a completed fetch is not repeated
        assert again.exit_code == 0, again.output
        assert len(srv.requests) == n_requests
    assert (root / ".wsss-fetch-complete").exists()
    assert (root / "ImageSets/Segmentation/train_aug.txt").read_text().split() == TRAIN_AUG
    aug = root / "SegmentationClassAug"
    # VOC's own PNG wins where SBD has the image too; SBD-only images come from GTcls
    assert (aug / f"{IDS[0]}.png").read_bytes() == (VOC_TINY / "SegmentationClass" / f"{IDS[0]}.png").read_bytes()
    for i in SBD_ONLY:
        np.testing.assert_array_equal(np.asarray(Image.open(aug / f"{i}.png")), _mask(i))
    assert not (root / "img").exists() and not list(root.parent.glob(".VOC2012.partial-*"))
    check = _cli("data", "check", "--config", cfg)
    assert check.exit_code == 0, check.output
    assert f"train_aug: {len(TRAIN_AUG)} images" in check.output and f"val: {len(VOC_VAL)} images" in check.output


def test_corrupt_archive_fails_clearly_and_is_not_unpacked(env, tmp_path, archives):
    root = tmp_path / "VOC2012"
    bad = bytearray(archives[SBD_TGZ])
    bad[len(bad) // 2] ^= 0xFF
    with _Server({VOC_TAR: archives[VOC_TAR], SBD_TGZ: bytes(bad)}) as srv:
        env.setenv("WSSS_FETCH_BASE_URL", srv.url)
        res = _cli("fetch", "voc", "--dest", root)
    assert res.exit_code == 1
    assert f"{srv.url}/{SBD_TGZ}" in res.output and "hash" in res.output.lower(), res.output
    downloads = tmp_path / "wsss-downloads"
    assert not root.exists() and not list(tmp_path.glob(".VOC2012.partial-*"))
    assert (downloads / VOC_TAR).exists() and not (downloads / SBD_TGZ).exists()
    assert not (downloads / f"{SBD_TGZ}.part").exists()


def test_mirror_without_server_voc_and_coco(env, tmp_path, archives):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in archives.items():
        (mirror / name).write_bytes(data)
    env.setenv("WSSS_FETCH_BASE_URL", "http://127.0.0.1:9")  # nothing listens: the mirror must be used
    voc_root = tmp_path / "voc/VOC2012"
    stale = tmp_path / "voc/.VOC2012.partial-killed/VOCdevkit"  # an unpack killed mid-way
    stale.mkdir(parents=True)
    res = _cli("fetch", "voc", "--dest", voc_root, "--mirror", mirror)
    assert res.exit_code == 0, res.output
    assert not stale.parent.exists()
    assert (voc_root / "ImageSets/Segmentation/train_aug.txt").read_text().split() == TRAIN_AUG
    coco_root = tmp_path / "coco"
    cfg = _coco_config(tmp_path, coco_root)
    res = _cli("fetch", "coco", "--config", cfg, "--mirror", mirror)
    assert res.exit_code == 0, res.output
    check = _cli("data", "check", "--config", cfg)
    assert check.exit_code == 0, check.output
    assert "train: 4 images (1 without annotations skipped)" in check.output, check.output
    assert re.search(r"^val: 4 images", check.output, re.M), check.output


def test_offline_error_lists_url_checksum_and_target(env, tmp_path):
    env.setenv("WSSS_FETCH_HASHES", "")
    env.setenv("WSSS_FETCH_BASE_URL", "http://127.0.0.1:9")
    res = _cli("fetch", "voc", "--dest", tmp_path / "VOC2012")
    assert res.exit_code == 1
    from torchvision.datasets.voc import DATASET_YEAR_DICT
    md5 = DATASET_YEAR_DICT["2012"]["md5"]
    assert "could not fetch 2 file(s)" in res.output, res.output
    assert f"http://127.0.0.1:9/{VOC_TAR}" in res.output and f"md5:{md5}" in res.output
    assert str(tmp_path / "wsss-downloads" / VOC_TAR) in res.output
    assert not (tmp_path / "VOC2012").exists()


def test_weights_recorded_then_checked_and_keys_printed(env, tmp_path):
    env.setenv("WSSS_FETCH_HASHES", "")
    cfg = ROOT / "configs/voc-deeplabv2.yaml"
    from pipeline.data.fetch import weight_remotes
    files = {r.name: f"fake {r.name}".encode() for rs in weight_remotes().values() for r in rs}
    sam = {r.name for r in weight_remotes()["sam_vit_h"]}
    # the SAM md5s and the ResNet-101 sha256 prefix are the publishers': fake files fail them
    with _Server(files) as srv:
        env.setenv("WSSS_FETCH_BASE_URL", srv.url)
        res = _cli("fetch", "weights", "--config", cfg, "--dest", tmp_path / "ckpt", "--no-hub")
    assert res.exit_code == 1
    assert "resnet101_imagenet.pth" in res.output and "does not start with" in res.output, res.output
    assert all(n in res.output for n in sam) and "sam_vit_l" not in res.output  # the config needs ViT-H only
    reg = json.loads((tmp_path / "ckpt/wsss-fetch-registry.json").read_text())
    name = "weaktr_voc_deit_small_checkpoint_best_mIoU.pth"
    assert reg[name]["sha256"] == hashlib.sha256(files[name]).hexdigest()
    # with checksums for the rest, the keys are printed; the recorded WeakTr file is checked again
    hashes = tmp_path / "w.json"
    hashes.write_text(json.dumps({n: f"md5:{hashlib.md5(b).hexdigest()}" for n, b in files.items()
                                  if not n.startswith("weaktr")}))
    env.setenv("WSSS_FETCH_HASHES", str(hashes))
    (tmp_path / "ckpt" / name).unlink()
    files[name] = b"changed upstream"
    with _Server(files) as srv:
        env.setenv("WSSS_FETCH_BASE_URL", srv.url)
        res = _cli("fetch", "weights", "--config", cfg, "--dest", tmp_path / "ckpt", "--no-hub")
        assert res.exit_code == 1 and name in res.output and "hash" in res.output.lower(), res.output
        files[name] = b"fake " + name.encode()
        (tmp_path / "ckpt" / name).unlink(missing_ok=True)
        res = _cli("fetch", "weights", "--config", cfg, "--dest", tmp_path / "ckpt", "--no-hub")
    assert res.exit_code == 0, res.output
    assert f"train_cam.init_checkpoint: {tmp_path / 'ckpt' / name}" in res.output
    assert f"train_segmentation.pretrained: {tmp_path / 'ckpt/resnet101_imagenet.pth'}" in res.output
    assert f"sam.checkpoint: {tmp_path / 'ckpt/sam_vit_h_4b8939.pth'}" in res.output


def test_prepare_data_fetches_first_and_keeps_its_key(env, tmp_path, archives):
    from pipeline.config import load_config
    from stages.runner import run_stage, stage_keys
    root = tmp_path / "VOC2012"
    cfg = load_config(_voc_config(tmp_path, root, fetch=True))
    plain = load_config(_voc_config(tmp_path, VOC_TINY))  # same settings, fetch off
    assert stage_keys(cfg)["prepare_data"] == stage_keys(load_config(
        _voc_config(tmp_path, root, fetch=False), check_paths=False))["prepare_data"]
    assert stage_keys(cfg)["prepare_data"] != stage_keys(plain)["prepare_data"]  # the root does count
    with _Server({VOC_TAR: archives[VOC_TAR], SBD_TGZ: archives[SBD_TGZ]}) as srv:
        env.setenv("WSSS_FETCH_BASE_URL", srv.url)
        out = run_stage(cfg, "prepare_data")
    report = json.loads((out / "data_report.json").read_text())
    assert report["train_aug"]["images"] == len(TRAIN_AUG) and report["val"]["images"] == len(VOC_VAL)
    # a tree the user made (no marker) is used as it is: no download, no error
    own = tmp_path / "own"
    shutil.copytree(VOC_TINY, own)
    cfg = load_config(_voc_config(tmp_path, own, fetch=True, train_split="train"))
    env.setenv("WSSS_FETCH_BASE_URL", "http://127.0.0.1:9")
    assert json.loads((run_stage(cfg, "prepare_data") / "data_report.json").read_text())["train"]["images"] == 70


def test_fetch_is_refused_for_a_folder_dataset():
    from pipeline.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="fetch: only the published data sets"):
        load_config(ROOT / "configs/folder-smoke.yaml", overrides={"data": {"fetch": True}})
