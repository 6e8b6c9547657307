"""The four SemPLeS training stages on the vendored voc-tiny data (tiny random
models, CPU): they run, losses go down, galleries/prompts are written, a
resumed run equals an uninterrupted one, and 2-process DDP equals 1 process."""
import json

import torch

from pipeline.config import load_config
from pipeline.data.datasets import LabelTable
from pipeline.semples.losses import train_cam_step
from pipeline.models.mask_generator import build_mask_generator, load_mask_generator
from pipeline.semples.training import FitSpec, TrainImages, fit
from stages.plan import RunPlan
from stages.runner import run_all, run_stage

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
STAGES = ("train_cam", "match", "learn_prompts", "refine")


def tiny_cfg(tmp_path, epochs=3, **run):
    """voc-smoke at 64 px with 8 images: a few seconds per epoch on 2 cores. The lrs are
    official-style (effective = lr x 4 / 512): 2e-3 and 5e-2 effective."""
    ov = {"run": {"work_dir": str(tmp_path / "runs"), **run}, "data": {"max_images": 8},
          "mask_generator": {"img_size": 64, "drop_path_rate": 0.0},
          "clip": {"image_size": 64},
          "train_cam": {"epochs": epochs, "batch_size": 4, "crop_size": 64, "lr": 0.256, "gallery_size": 2},
          "match": {"epochs": epochs, "batch_size": 4, "crop_size": 64, "lr": 0.256, "gallery_size": 2},
          "learn_prompts": {"epochs": epochs, "batch_size": 4, "crop_size": 64, "lr": 6.4, "gallery_size": 2,
                            "n_interpret_images": 2},
          "refine": {"epochs": epochs, "batch_size": 4, "crop_size": 64, "lr": 0.256, "gallery_size": 2}}
    return load_config(ROOT / "configs/voc-smoke.yaml", overrides=ov)


def history(d, name):
    return json.loads((d / f"{name}_history.json").read_text())


def test_all_stages_run_and_learn(tmp_path):
    cfg = tiny_cfg(tmp_path)
    dirs = {s: run_stage(cfg, s) for s in ("prepare_data",) + STAGES}
    for s in STAGES:
        d = dirs[s]
        h = history(d, s)
        assert len(h) == 3 and h[-1]["loss"] < h[0]["loss"], f"{s}: loss did not go down: {h}"
        assert (d / f"{s}_history.png").stat().st_size > 0 and (d / "gallery.png").stat().st_size > 0
        assert (d / "manifest.json").exists()
    for s in ("train_cam", "match", "refine"):
        m = load_mask_generator(dirs[s] / "model.pt", "cpu")
        assert m.cams(torch.zeros(1, 3, 64, 64)).shape == (1, 20, 4, 4)
    p = torch.load(dirs["learn_prompts"] / "prompts.pt")["prompts"]
    assert p.shape == (20, 30, 64)
    interp = dirs["learn_prompts"] / "interpret"
    words = json.loads((interp / "nearest_words.json").read_text())
    assert set(words) >= {"aeroplane", "person"} and len(words["person"]) == 30
    assert (interp / "nearest_words.md").exists() and (interp / "prompt_regions.png").exists()
    # refine restarts S from train_cam (official code), not from match
    tc = torch.load(dirs["train_cam"] / "model.pt")["state_dict"]
    assert cfg.refine.init_from == "train_cam"
    rf = torch.load(dirs["refine"] / "model.pt")["state_dict"]
    assert not torch.equal(tc["head.weight"], rf["head.weight"])


def test_resume_equals_uninterrupted(tmp_path, prepared):
    cfg = tiny_cfg(tmp_path, epochs=2)
    cfg.mask_generator.drop_path_rate = 0.1  # exercises the restored RNG state
    table = LabelTable.from_artifact(prepared, "train")

    def train(out, stop_after=None):
        torch.manual_seed(0)
        model = build_mask_generator(cfg.mask_generator, 20, load_weights=False)
        ds = TrainImages(table, 64, seed=0, ids=table.ids()[:8])
        fit(FitSpec(out, cfg.train_cam, 0, ds, model, train_cam_step, torch.device("cpu"), stop_after=stop_after))
        return model

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    full = train(a)
    train(b, stop_after=1)
    assert json.loads((b / "train_history.json").read_text())[-1]["epoch"] == 1
    torch.manual_seed(123)  # a different global RNG state must not matter
    resumed = train(b)
    for (k, v), (_, w) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(v, w), k
    assert history(a, "train") == [dict(h, seconds=g["seconds"], images_per_s=g["images_per_s"]) for h, g in
                                   zip(history(b, "train"), history(a, "train"))]


def test_augmentation_depends_only_on_seed_epoch_index(prepared):
    table = LabelTable.from_artifact(prepared, "train")
    ds = TrainImages(table, 64, seed=3)
    ds.set_epoch(2)
    x1 = ds[5][0]
    torch.manual_seed(99)
    ds[1]
    assert torch.equal(ds[5][0], x1)
    ds.set_epoch(3)
    assert not torch.equal(ds[5][0], x1)


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    """match for one epoch (2 steps of 4 images) with torchrun x 2 (gloo) vs 1 process."""
    cfg = tiny_cfg(tmp_path, epochs=1)
    single = run_all(cfg, until="match")["match"]
    ddp_cfg = tiny_cfg(tmp_path, epochs=1, nproc_per_node=2, dist_backend="gloo")
    out = tmp_path / "ddp_match"
    out.mkdir()
    from stages import get
    from stages.launch import execute
    metrics = execute(get("match"), ddp_cfg, RunPlan(ddp_cfg).input_dirs("match"), out)  # fans out: nproc_per_node 2
    a = torch.load(single / "model.pt")["state_dict"]
    b = torch.load(out / "model.pt")["state_dict"]
    warm = torch.load(RunPlan(cfg).input_dirs("match")["train_cam"] / "model.pt")["state_dict"]
    moved = max((a[k] - warm[k]).abs().max().item() for k in a if k in warm)
    assert moved > 1e-4  # training changed the weights, so the comparison means something
    # Adam's first steps divide each gradient element by its own magnitude, so an element whose
    # gradient is a near-cancelling sum (a class barely in the batch) moves by up to lr per step
    # on the float rounding of the all-reduce: a few such elements may differ by up to 2 x lr
    # (2 steps); everything else agrees to float tolerance
    lr = ddp_cfg.match.effective_lr()
    for k in a:
        d = (a[k] - b[k]).abs()
        off = d > 1e-5 + 1e-4 * a[k].abs()
        assert off.float().mean() <= 1e-3 and (d[off] <= 2 * lr).all(), (k, int(off.sum()), d.max().item())
    h1, h2 = history(single, "match"), history(out, "match")
    assert abs(h1[0]["loss"] - h2[0]["loss"]) < 1e-5 and metrics["epochs"] == 1
