"""Bad input and bad settings fail early, by name: config ranges (a property test over every
field), image sizes the CAM export cannot handle, one paragraph per failure with the
traceback in the run's log file, no temporary file after a failed write (disk full), a fast
offline preflight; and the CPU user's path: `init-dataset --tiny`, `status`, `serve`."""
from __future__ import annotations

import errno
import re
import shutil
import subprocess
import sys
import time
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import annotated_types as at
import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel

from pipeline.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs/voc-smoke.yaml"

# numeric fields without a range, and why any value of their type is valid
UNCONSTRAINED = {
    "sam.iou_thresh_offsets": "per-level offsets added to SAM's IoU threshold: any sign",
    "sam.nms_offsets": "per-level offsets added to the NMS score: any sign",
    "sam.stability_score_bias": "per-level offsets added to SAM's stability score: any sign",
}


# ----------------------------------------------------------------- config ranges
def _unwrap(ann):
    """Optional[X] -> X; Annotated[X, ...] -> (X, its metadata)."""
    meta = []
    while True:
        if typing.get_origin(ann) is typing.Union:
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(args) != 1:
                return ann, meta
            ann = args[0]
        elif typing.get_origin(ann) is typing.Annotated:
            meta += [m for a in ann.__metadata__ for m in (getattr(a, "metadata", None) or [a])]
            ann = typing.get_args(ann)[0]
        else:
            return ann, meta


def _fields(model: type[BaseModel] = Config, prefix: str = ""):
    """(dotted path, annotation without Optional/Annotated, range metadata) of every leaf field."""
    for name, f in model.model_fields.items():
        if f.exclude:
            continue
        ann, meta = _unwrap(f.annotation)
        meta = list(f.metadata) + meta
        path = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _fields(ann, path + ".")
        elif typing.get_origin(ann) is dict:
            sub, _ = _unwrap(typing.get_args(ann)[1])
            assert not any(a in (int, float) for _, a, _ in _fields(sub)), f"{path}: numbers inside a mapping"
        else:
            yield path, ann, meta


def _numeric(ann) -> bool:
    if ann in (int, float):
        return True
    if typing.get_origin(ann) in (list, tuple):
        return any(_numeric(_unwrap(a)[0]) for a in typing.get_args(ann) if a is not Ellipsis)
    return False


def _bounded(ann, meta) -> bool:
    if any(isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le)) for m in meta):
        return True
    if typing.get_origin(ann) is list:  # list[Positive]: bounds on the items
        return any(isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le)) for m in _unwrap(typing.get_args(ann)[0])[1])
    return False


def test_every_numeric_field_has_a_range_or_a_reason():
    seen = set()
    for path, ann, meta in _fields():
        if typing.get_origin(ann) is typing.Literal or not _numeric(ann):
            continue
        seen.add(path)
        assert _bounded(ann, meta) or path in UNCONSTRAINED, f"{path}: no range and not listed in UNCONSTRAINED"
        if typing.get_origin(ann) is list:  # a list the stages iterate: empty is refused
            assert any(isinstance(m, at.MinLen) and m.min_length >= 1 for m in meta), f"{path}: may be empty"
    assert set(UNCONSTRAINED) <= seen
    assert len(seen) > 60  # every section's numbers, not a few


def _bad_values(ann, meta) -> list:
    """Values just outside each bound (and an empty list where one item is the minimum)."""
    item_ann, item_meta = (_unwrap(typing.get_args(ann)[0]) if typing.get_origin(ann) is list else (ann, []))
    out = []
    for m in (item_meta if item_meta else meta):
        kind = item_ann if item_meta else ann
        step = 1 if kind is int else 1e-3
        if isinstance(m, at.Ge):
            out.append(m.ge - step)
        elif isinstance(m, at.Gt):
            out.append(m.gt)
        elif isinstance(m, at.Le):
            out.append(m.le + step)
        elif isinstance(m, at.Lt):
            out.append(m.lt)
    if item_meta:
        out = [[v] for v in out]
    out += [[] for m in meta if isinstance(m, at.MinLen) and m.min_length == 1]
    return out


def _override(path: str, value) -> dict:
    out: dict = {}
    node = out
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def test_each_out_of_range_value_is_refused_naming_its_field():
    base = load_config(SMOKE, check_paths=False)
    checked = 0
    for path, ann, meta in _fields():
        if typing.get_origin(ann) is typing.Literal or not _numeric(ann) or path in UNCONSTRAINED:
            continue
        bad = _bad_values(ann, meta)
        assert bad, f"{path}: no out-of-range value derived from {meta}"
        for value in bad:
            over = _override(path, value)
            if path.startswith("train_segmentation.crf."):  # None by default: give the section first
                over["train_segmentation"]["crf"] = {**base.pseudo_masks.crf.model_dump(), **over["train_segmentation"]["crf"]}
            with pytest.raises(ConfigError) as e:
                load_config(SMOKE, overrides=over, check_paths=False)
            assert re.search(rf"<overrides>: {re.escape(path)}(\.0)?: ", str(e.value)), (path, value, str(e.value))
            checked += 1
    assert checked > 60


def test_the_issues_bad_values_are_refused_by_name():
    for over, key in (({"export_cams": {"scales": []}}, "export_cams.scales"),
                      ({"export_cams": {"scales": [1.0, -0.5]}}, "export_cams.scales.1"),
                      ({"match": {"lr": -0.00015625}}, "match.lr"),
                      ({"train_cam": {"epochs": 0}}, "train_cam.epochs"),
                      ({"evaluate": {"sweep": []}}, "evaluate.sweep")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config(SMOKE, overrides=over, check_paths=False)


def test_ranges_change_no_artifact_key():
    """Keys digest the values, not the schema: the shipped configs' resolved values (pinned in
    tests/fixtures/resolved_configs.json by test_config_defaults) are what they were, and the
    checks section, which no stage declares, is in no key."""
    from stages.runner import stage_keys
    cfg = load_config(SMOKE, check_paths=False)
    changed = load_config(SMOKE, overrides={"checks": {"min_patches": 3, "small_images": "warn",
                                                       "export_memory_gb": 1.0, "large_images": "warn"}},
                          check_paths=False)
    assert stage_keys(cfg) == stage_keys(changed)


# ----------------------------------------------------------------- image sizes
def _cli(*args):
    from typer.testing import CliRunner

    from flows.cli import app
    return CliRunner().invoke(app, [str(a) for a in args])


def _voc_with(tmp_path: Path, sizes: dict[str, tuple[int, int]], extra: str = "", at: int = 10,
              max_images: int | None = None) -> Path:
    """A voc-tiny copy whose train split gets images of the given (width, height) (a class-1
    mask each) at position ``at``; returns its config (voc-smoke, work_dir in tmp_path)."""
    root = tmp_path / "voc"
    shutil.copytree(ROOT / "data/voc-tiny", root)
    lst = root / "ImageSets/Segmentation/train.txt"
    ids = lst.read_text().split()
    for i, (w, h) in sizes.items():
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        Image.fromarray(np.ones((h, w), np.uint8), mode="L").save(root / "SegmentationClass" / f"{i}.png")
        ids.insert(at, i)
    lst.write_text("\n".join(ids) + "\n")
    cfg = tmp_path / "cfg.yaml"
    cap = f", max_images: {max_images}" if max_images else ""
    cfg.write_text(f"_base_: {SMOKE}\nrun: {{work_dir: {tmp_path / 'runs'}}}\ndata: {{root: {root}{cap}}}\n{extra}")
    return cfg


def test_data_check_refuses_or_warns_on_images_the_export_cannot_handle(tmp_path):
    cfg = _voc_with(tmp_path, {"tiny_1x1": (1, 1), "huge_6000x4000": (6000, 4000)})
    res = _cli("data", "check", "--config", cfg)
    assert res.exit_code == 1, res.output
    small = next(ln for ln in res.output.splitlines() if "tiny_1x1.jpg" in ln)
    assert small.startswith("  BAD ") and "1x1 px gives 0 patches" in small and "checks.min_patches" in small
    assert "export_cams.scales 1.0" in small
    large = next(ln for ln in res.output.splitlines() if "huge_6000x4000.jpg" in ln)
    # 375 x 250 patches + 20 class tokens, (12 + 1) x 3 heads of deit_tiny, float32, with the flip
    need = 13 * 3 * (375 * 250 + 20) ** 2 * 4 * 2 / 1e9
    assert large.startswith("  BAD ") and f"about {need:.1f} GB" in large and "checks.export_memory_gb" in large
    assert "2 bad items" in res.output
    cfg.write_text(cfg.read_text() + "checks: {small_images: warn, large_images: warn}\n")
    res = _cli("data", "check", "--config", cfg)
    assert res.exit_code == 0 and res.output.count("  WARN ") == 2, res.output


def test_export_memory_estimate_matches_the_attention_maps_held():
    """The estimate counts what ViTMaskGenerator keeps: a (B, heads, T, T) map per block."""
    import torch

    from pipeline.config import MaskGeneratorCfg
    from pipeline.data.image_checks import arch_of, export_bytes
    from pipeline.models.mask_generator import ViTMaskGenerator
    model = ViTMaskGenerator(MaskGeneratorCfg(backbone="deit_tiny_patch16_224", pretrained=False), 2).eval()
    maps = []  # the softmax attention each block hands to the fusion (what _keep_map keeps)
    for blk in model.vit.blocks:
        blk.attn.attn_drop.register_forward_hook(lambda m, i, o: maps.append(i[0].numel() * 4))
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 96))
    held = sum(maps)
    a = arch_of("vit", "deit_tiny_patch16_224")
    assert (a.patch, a.depth, a.heads) == (16, 12, 3) and out["fine"].shape[-2:] == (4, 6)
    # + the one map being computed; no flip
    assert export_bytes(64, 96, 1.0, a, 2, flip=False) == held + held // 12


# ----------------------------------------------------------------- failures through `wsss run`
def _env(tmp: Path, **extra) -> dict:
    from test_flow import _env as flow_env
    return flow_env(tmp, **extra)


def _wsss(tmp: Path, *args, env: dict | None = None, timeout: int = 1200) -> subprocess.CompletedProcess:
    from test_flow import _run
    return _run([sys.executable, "-m", "flows.cli", *map(str, args)], env or _env(tmp), timeout)


def _one_paragraph(res: subprocess.CompletedProcess, *names: str) -> tuple[str, Path]:
    """The error line and the log file it points to: no traceback on the terminal, the message
    once, the traceback in the log."""
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-4000:]
    assert "Traceback" not in res.stderr, res.stderr[-6000:]
    line = re.search(r"^error: .*?(?=^\(full traceback)", res.stderr, re.S | re.M).group(0)
    for n in names:
        assert n in line, (n, line)
    assert res.stderr.count(line[len("error: "):80]) == 1, res.stderr[-6000:]
    log = Path(re.search(r"\(full traceback: (.+\.log)\)", res.stderr).group(1))
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and line[len("error: "):120] in text
    return line, log


def test_run_stops_after_prepare_data_on_an_image_too_small_to_export(tmp_path):
    from pipeline.store import Store
    from stages.runner import stage_keys
    cfg = _voc_with(tmp_path, {"tiny_1x1": (1, 1)})
    res = _wsss(tmp_path, "run", "--no-prefect", "--config", cfg)
    _one_paragraph(res, "stage 'prepare_data' failed", "tiny_1x1.jpg", "checks.min_patches", "checks.small_images")
    keys, store = stage_keys(load_config(cfg)), Store(tmp_path / "runs")
    assert store.state(keys["prepare_data"]) == "cached"  # the labels are right; the export settings are not
    assert store.state(keys["train_cam"]) == "missing"  # nothing trained for hours first


@pytest.mark.slow
def test_a_failing_stage_is_reported_once_naming_stage_image_and_field(tmp_path):
    """Warned but let through, the 1x1 image fails the export inside a Prefect shard subflow:
    one paragraph (stage, image, config fields), once; the tracebacks only in the log."""
    cfg = _voc_with(tmp_path, {"tiny_1x1": (1, 1)}, "checks: {small_images: warn}\nexport_cams: {source: train_cam}\n",
                    at=5, max_images=8)
    res = _wsss(tmp_path, "run", "--config", cfg, "--until", "export_cams")
    line, log = _one_paragraph(res, "stage 'export_cams' failed on image tiny_1x1", "tiny_1x1.jpg",
                               "export_cams.scales", "checks.min_patches", "Kernel size")
    assert len(line) < 600
    assert "[checks.small_images: warn]" in res.stderr  # the warning came first
    assert log.read_text().count("Traceback (most recent call last)") >= 2  # Prefect's reports went here


# ----------------------------------------------------------------- disk full
class _FullDisk:
    """open() whose files take ``room`` bytes, then fail as a full disk does (ENOSPC)."""

    def __init__(self, room: int):
        self.room = room

    def __call__(self, path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)
        if "w" not in mode:
            return f
        write, owner = f.write, self

        def limited(data):
            if len(data) > owner.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            owner.room -= len(data)
            return write(data)
        f.write = limited
        return f


def test_a_failed_write_names_the_path_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import torch

    import pipeline.fileio as store
    monkeypatch.setattr(store, "open", _FullDisk(4096), raising=False)
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(OSError) as e:
        store.torch_save_atomic({"w": torch.zeros(100_000)}, target)
    assert e.value.errno == errno.ENOSPC and str(target) in str(e.value) and "[Errno 28]" in str(e.value)
    assert "unexpected pos" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file
    monkeypatch.setattr(store.Path, "write_text", lambda self, text: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError, match=r"\[Errno 28\].*manifest.json"):
        store.write_json_atomic(tmp_path / "manifest.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` for the block; skips the test where mounting is
    not allowed (needs root)."""
    where.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.slow
def test_disk_full_during_a_run_names_the_file_and_the_rerun_leaves_no_temp_file(tmp_path):
    """A real full disk (a 4 MB tmpfs run store; needs root): train_cam's checkpoint (~70 MB with
    the optimiser state) cannot be written. The error names the file and Errno 28; no temporary
    file stays; with room again the rerun resumes and finishes clean."""
    with tmpfs(tmp_path / "store", "4m") as store:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(f"_base_: {SMOKE}\nrun: {{work_dir: {store / 'runs'}}}\ndata: {{max_images: 8}}\n"
                       "train_cam: {seed_eval_every: 0}\n")
        res = _wsss(tmp_path, "run", "--no-prefect", "--config", cfg, "--until", "train_cam")
        line, _ = _one_paragraph(res, "stage 'train_cam' failed", "[Errno 28] No space left on device",
                                 "checkpoint.pt", "run.work_dir")
        assert "unexpected pos" not in line
        assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]
        subprocess.run(["mount", "-o", "remount,size=512m", str(store)], check=True)
        res = _wsss(tmp_path, "run", "--no-prefect", "--config", cfg, "--until", "train_cam")
        assert res.returncode == 0, res.stderr[-3000:]
        assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]


# ----------------------------------------------------------------- offline preflight
def test_offline_preflight_probes_once_and_does_not_retry(tmp_path, monkeypatch, caplog):
    """An unreachable hub (here a name that never resolves, as on a machine without DNS):
    one probe, then huggingface_hub's cache-only mode: no retry loop (it retried ~1 min)."""
    import logging

    from huggingface_hub import constants

    import pipeline.weights as weights
    from stages.plan import RunPlan
    from stages.runner import preflight
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://wsss-offline.invalid")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf/hub"))
    monkeypatch.setattr(weights, "_probes", {})
    monkeypatch.setattr(weights, "_resolved", set())
    probes = []
    real = weights.unreachable
    monkeypatch.setattr(weights, "unreachable", lambda url: probes.append(url) or real(url))
    cfg = load_config(SMOKE, overrides={"run": {"work_dir": str(tmp_path / "runs")},
                                        "mask_generator": {"pretrained": True}})
    import timm  # noqa: F401 - imported before the clock starts
    caplog.set_level(logging.WARNING)
    t0 = time.time()
    with pytest.raises(weights.WeightsUnavailable, match=r"host unreachable, wsss-offline\.invalid:443"):
        preflight(RunPlan(cfg, ["train_cam"]))
    took = time.time() - t0
    assert probes == ["https://wsss-offline.invalid"]
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]
    assert took < weights.PROBE_TIMEOUT_S + 5, took  # probe + a cache lookup, no backoff sleeps
    assert constants.HF_HUB_OFFLINE is False  # the offline mode was for the preflight only


def test_offline_run_fails_fast_without_hf_hub_offline(tmp_path):
    """`wsss run` on a machine whose hub does not answer, HF_HUB_OFFLINE unset: one paragraph."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"_base_: {SMOKE}\nrun: {{work_dir: {tmp_path / 'runs'}}}\nmask_generator: {{pretrained: true}}\n")
    env = _env(tmp_path, HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="https://wsss-offline.invalid")
    env.pop("HF_HUB_OFFLINE", None)
    res = _wsss(tmp_path, "run", "--config", cfg, env=env, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "Retrying" not in res.stderr, res.stderr[-3000:]
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("error: "))
    assert "mask_generator.pretrained" in line and "host unreachable" in line and "Nothing was written" in line
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------- serve, init-dataset, status
def test_serve_serves_every_top_level_config_as_the_docs_say():
    from flows.serve import deployments
    page = (ROOT / "docs/guide/prefect.md").read_text()
    assert "wsss serve                                # serves wsss/<name> for every configs/*.yaml" in page
    served = deployments()
    names = sorted(d.name for d in served if d.flow_name == "wsss")
    assert names == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert sorted(d.name for d in served if d.flow_name == "wsss-seeds") == names  # each also once per seed
    assert "voc-full" in names and "folder-smoke" in names and "voc-semples" not in names  # no ablations


def _tagged_folder(tmp_path: Path, n: int = 12) -> Path:
    d = tmp_path / "pets"
    (d / "images").mkdir(parents=True)
    jpgs = sorted((ROOT / "data/coco-tiny/images/train2017").glob("*.jpg"))[:n]
    rows = ["image,labels"]
    for k, j in enumerate(jpgs):
        shutil.copy(j, d / "images" / j.name)
        rows.append(f"{j.name},{['dog', 'cat;person', 'person'][k % 3]}")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    d.chmod(0o555)  # a read-only data folder: init-dataset writes nothing into it
    return d


@pytest.mark.slow
def test_init_dataset_tiny_runs_on_cpu_and_status_shows_headline_numbers(tmp_path):
    d = _tagged_folder(tmp_path)
    out = tmp_path / "configs/pets.yaml"
    try:
        res = _cli("init-dataset", d, "--out", out, "--tiny")
    finally:
        d.chmod(0o755)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "configs/pets.classes.txt").read_text() == "cat\ndog\nperson\n"
    cfg = load_config(out)
    assert cfg.train_segmentation.tiny and cfg.mask_generator.pretrained is False and cfg.clip.factory
    assert cfg.train_cam.epochs == 2 and cfg.export_cams.scales == [1.0]
    text = out.read_text().replace("runs/pets", str(tmp_path / "runs"))
    out.write_text(text)
    res = _wsss(tmp_path, "run", "--config", out, "--no-prefect")  # the config is the point, not the flow
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    res = _cli("status", "--config", out)
    assert res.exit_code == 0, res.output
    rows = {ln.split()[0]: ln for ln in res.output.splitlines()[1:]}
    for stage in ("train_cam", "match", "refine", "learn_prompts"):
        assert "cached" in rows[stage] and re.search(r"final_loss=[-\d.]", rows[stage]), rows[stage]
        assert "selection" not in rows[stage]
    assert re.search(r"miou=[\d.]", rows["train_segmentation"]) or "images_with_gt" in rows["evaluate"]


def test_status_headline_prefers_the_seed_miou_and_skips_text():
    from stages.status import headline
    m = {"selection": "last epoch (no pixel labels)", "final_loss": 0.7, "final_seed_miou": 0.31, "epochs": 2}
    assert headline(m) == ("final_seed_miou", 0.31)
    assert headline({"selection": "x", "final_loss": 0.7}) == ("final_loss", 0.7)
    assert headline({"selection_uses_ground_truth": True, "images": 3}) == ("images", 3)
    assert headline({"split": "train"}) is None


def test_stage_error_names_the_batch_the_fields_and_survives_pickling():
    import pickle

    from pipeline.data.datasets import Record
    from pipeline.utils import StageError, stage_error

    def infer(recs):  # a project frame holding the batch being computed
        raise RuntimeError("CUDA out of memory. Tried to allocate 211.00 GiB")

    batch = [Record("a", "/d/a.jpg", None, 9, 9, [1]), Record("b", "/d/b.jpg", None, 9, 9, [1])]
    try:
        infer(batch)
    except RuntimeError as exc:
        e = stage_error("export_cams", exc, ("mask_generator", "export_cams"))
    assert isinstance(e, StageError) and e.images == ["a", "b"]
    assert str(e).startswith("stage 'export_cams' failed on images a, b: RuntimeError: CUDA out of memory")
    assert "export_cams.batch_size, export_cams.scales, checks.export_memory_gb" in str(e)
    assert stage_error("export_cams", e) is e  # re-raised once, not wrapped again
    back = pickle.loads(pickle.dumps(e))  # Prefect persists a failed task's exception
    assert str(back) == str(e) and back.stage == "export_cams" and back.images == ["a", "b"]
    plain = stage_error("pseudo_masks", KeyError("x"), ("pseudo_masks", "data"))
    assert "[config: one of this stage's sections: pseudo_masks, data]" in str(plain)
    named = stage_error("refine", ValueError("refine.lr must be positive; see /tmp/run.log"), ("refine",))
    assert named.fields == ["refine.lr"]
