"""Facts of the official implementation (kuongan/SemPLeS models123.py, AAF.py,
main1-3.py, engine1-3.py; hustvl/WeakTr models.py, AAF.py, main.py,
datasets.py) pinned one by one. Tiny random models on CPU, except the checkpoint
import, which uses the official DeiT-S layout and shapes with random values."""
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ClipCfg, ConfigError, MaskGeneratorCfg, load_config
from pipeline.data.classes import prompt_names
from pipeline.losses import train_cam_step
from pipeline.models.mask_generator import (build_mask_generator, load_mask_generator, load_weights_from,
                                            save_mask_generator)
from pipeline.models.vl import PromptLearner, build_vl
from pipeline.models.weaktr_import import import_weaktr_checkpoint
from pipeline.training import TrainImages
from stages.runner import run_stage
from test_semples_stages import tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
TINY = MaskGeneratorCfg(backbone="deit_tiny_patch16_224", pretrained=False, img_size=64, drop_path_rate=0.0)


# ------------------------------------------------------------------ 1. CLIP activation
def _is_quick_gelu(vl) -> bool:
    act = vl.model.transformer.resblocks[0].mlp.gelu
    return type(act).__name__ == "QuickGELU"


def test_full_configs_build_a_quickgelu_clip():
    for name, root in (("voc-full", "data/voc-tiny"),):
        cfg = load_config(ROOT / f"configs/{name}.yaml", overrides={"data": {"root": root}})
        assert cfg.clip.pretrained == "openai" and cfg.clip.model == "ViT-B-32-quickgelu"
        # the same model without the hub download (no network here)
        vl = build_vl(cfg.clip.model_copy(update={"pretrained": None, "allow_random_init": True}))
        assert _is_quick_gelu(vl)
    coco = (ROOT / "configs/_base_/semples.yaml").read_text()
    assert "model: ViT-B-32-quickgelu" in coco  # coco-full inherits the CLIP section unchanged


def test_gelu_clip_with_openai_weights_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="clip.model: OpenAI weights need QuickGELU"):
        ClipCfg(model="ViT-B-32", pretrained="openai")
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(f"_base_: {ROOT}/configs/voc-smoke.yaml\n"
                        "clip: {factory: null, model: ViT-B-32, pretrained: openai}\n")
    with pytest.raises(ConfigError, match="QuickGELU"):
        load_config(cfg_file)


def test_local_clip_checkpoint_needs_an_explicit_activation_and_gets_it(tmp_path):
    src = build_vl(ClipCfg(model="ViT-B-32-quickgelu", pretrained=None, allow_random_init=True))
    path = tmp_path / "clip_b32.pt"
    torch.save(src.model.state_dict(), path)
    with pytest.raises(ValueError, match="clip.quick_gelu"):
        ClipCfg(model="ViT-B-32", pretrained=str(path))
    vl = build_vl(ClipCfg(model="ViT-B-32", pretrained=str(path), quick_gelu=True))
    assert _is_quick_gelu(vl)
    assert torch.equal(vl.model.visual.conv1.weight, src.model.visual.conv1.weight)


# ------------------------------------------------------------------ 2. what trains
@pytest.fixture(scope="module")
def match_run(tmp_path_factory):
    """prepare_data -> train_cam -> match (2 epochs each) on 8 vendored images."""
    cfg = tiny_cfg(tmp_path_factory.mktemp("fid"), epochs=2)
    dirs = {s: run_stage(cfg, s) for s in ("prepare_data", "train_cam", "match")}
    return cfg, dirs


def _state(d):
    return torch.load(Path(d) / "model.pt", weights_only=True)["state_dict"]


def test_match_trains_only_head_and_fusion(match_run):
    cfg, dirs = match_run
    warm, after = _state(dirs["train_cam"]), _state(dirs["match"])
    frozen = [k for k in after if not k.startswith(("head.", "fusion."))]
    assert any(k.startswith("vit.blocks.") for k in frozen) and {"cls_tokens", "cls_pos", "patch_pos"} <= set(frozen)
    for k in frozen:
        assert torch.equal(after[k], warm[k]), f"{k} moved in match"
    assert not torch.equal(after["head.weight"], warm["head.weight"])
    # the phases' feature fusion is new (the warm start has WeakTr's map fusion) and learns
    assert not any(k.startswith("fusion.attn_") for k in warm)
    assert {k for k in after if k.startswith("fusion.")} == {
        "fusion.attn_head_ffn.0.weight", "fusion.attn_head_ffn.2.weight", "fusion.attn_feat_ffn.0.weight",
        "fusion.attn_feat_ffn.0.bias", "fusion.attn_feat_ffn.1.weight", "fusion.attn_feat_ffn.1.bias"}


def test_trainable_all_moves_the_backbone(match_run, tmp_path):
    cfg, dirs = match_run
    from stages import match
    cfg = cfg.model_copy(update={"match": cfg.match.model_copy(update={"trainable": "all", "epochs": 1})})
    out = tmp_path / "match_all"
    out.mkdir()
    match.run(cfg, {"prepare_data": dirs["prepare_data"], "train_cam": dirs["train_cam"]}, out)
    assert not torch.equal(_state(out)["vit.blocks.0.attn.qkv.weight"],
                           _state(dirs["train_cam"])["vit.blocks.0.attn.qkv.weight"])


def test_frozen_backbone_gets_no_gradient_and_fine_cam_is_head_and_fusion():
    torch.manual_seed(0)
    m = build_mask_generator(TINY.model_copy(update={"fusion": "features"}), 3).set_recipe(True, False)
    out = m(torch.randn(2, 3, 64, 64))
    out["fine"].sum().backward()
    assert m.head.weight.grad is not None and m.fusion.attn_head_ffn[0].weight.grad is not None
    assert all(p.grad is None for p in m.backbone_parameters())


def test_warm_start_fine_cam_loss_does_not_reach_the_coarse_cam():
    torch.manual_seed(0)
    m = build_mask_generator(TINY, 3).set_recipe(detach_tokens=False, detach_coarse=True)
    out = m(torch.randn(2, 3, 64, 64))
    F.multilabel_soft_margin_loss(out["attn_logits"], torch.tensor([[1., 0, 1], [0, 1, 0]])).backward()
    assert m.head.weight.grad is None  # only the fusion learns from the fine CAM (WeakTr models.py)
    assert m.vit.blocks[0].attn.qkv.weight.grad is None
    assert m.fusion.fc[0].weight.grad.abs().sum() > 0
    loss, _, _ = train_cam_step(m, torch.randn(2, 3, 64, 64), torch.tensor([[1., 0, 1], [0, 1, 0]]))
    loss.backward()
    assert m.head.weight.grad.abs().sum() > 0 and m.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ 3. learning-rate rule
def test_history_lr_is_official_lr_times_global_batch_over_512(match_run):
    cfg, dirs = match_run
    h = json.loads((dirs["match"] / "match_history.json").read_text())
    assert h[0]["lr"] == pytest.approx(cfg.match.lr * cfg.match.batch_size / 512)
    # main1.py steps the scheduler after each epoch: epoch 2 trains at the value for epoch 0
    assert h[1]["lr"] == pytest.approx(h[0]["lr"])
    full = load_config(ROOT / "configs/voc-full.yaml", overrides={"data": {"root": "data/voc-tiny"}})
    assert [full.match.effective_lr(), full.learn_prompts.effective_lr(), full.refine.effective_lr()] == \
        pytest.approx([6.4e-5, 0.025, 6.4e-5])
    assert (full.match.lr, full.learn_prompts.lr, full.refine.lr) == (5.12e-4, 0.1, 5.12e-4)
    assert (full.train_cam.lr, full.train_cam.warmup_epochs, full.train_cam.min_lr) == (6e-4, 5, 1e-5)


def test_warm_start_decays_only_matrices(match_run):
    cfg, dirs = match_run
    ck = torch.load(dirs["train_cam"] / "checkpoint.pt", weights_only=False)
    decays = sorted(g["weight_decay"] for g in ck["optimizer"]["param_groups"])
    assert decays == [0.0, cfg.train_cam.weight_decay]


# ------------------------------------------------------------------ 4. attention fusion
@pytest.mark.parametrize("fusion", ["maps", "features"])
def test_fusion_weights_depend_on_the_image(fusion):
    torch.manual_seed(0)
    m = build_mask_generator(TINY.model_copy(update={"fusion": fusion}), 3).eval()
    with torch.no_grad():
        w = m(torch.randn(2, 3, 64, 64))["fusion_weights"]
    assert w.shape == (2, 12 * 3) and ((w > 0) & (w < 1)).all()
    assert not torch.allclose(w[0], w[1])


def test_fusion_shapes_follow_the_official_reductions():
    m = build_mask_generator(TINY.model_copy(update={"fusion": "features", "fusion_reduction": 4}), 3)
    assert m.fusion.attn_head_ffn[0].weight.shape == (9, 36)  # int(36 / 4)
    assert m.fusion.attn_feat_ffn[0].weight.shape == (8, 64)  # int(64 / 8), head dim 64
    m = build_mask_generator(TINY, 3)
    assert m.fusion.fc[0].weight.shape == (4, 36) and m.fusion.pool == "max"


# ------------------------------------------------------------------ 5. no final LayerNorm
def test_final_layernorm_is_not_applied():
    torch.manual_seed(0)
    m = build_mask_generator(TINY, 3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = m(x)["coarse"].clone()
        m.vit.norm.weight.mul_(7.0)
        m.vit.norm.bias.add_(3.0)
        assert torch.equal(m(x)["coarse"], before)


# ------------------------------------------------------------------ 6. augmentation
def test_augmentations_are_timm_weaktr_and_crop_flip(match_run):
    cfg, dirs = match_run
    from pipeline.data.datasets import LabelTable
    table = LabelTable.from_artifact(dirs["prepare_data"], "train")
    names = lambda ds: [type(t).__name__ for t in ds.transform.transforms]  # noqa: E731
    weaktr = TrainImages(table, 64, augment="weaktr")
    assert names(weaktr) == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment",
                             "MaybeToTensor", "Normalize", "RandomErasing"]
    t = weaktr.transform.transforms
    assert "bicubic" in str(t[0]) and t[-1].probability == 0.25 and len(t[2].ops) == 15
    assert t[2].ops[0].magnitude == 9 and t[2].ops[0].magnitude_std == 0.5
    flip_only = TrainImages(table, 64, augment="crop_flip")
    assert names(flip_only) == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "MaybeToTensor",
                                "Normalize"]
    assert (cfg.train_cam.augment, cfg.match.augment, cfg.learn_prompts.augment, cfg.refine.augment) == \
        ("weaktr", "weaktr", "crop_flip", "weaktr")


# ------------------------------------------------------------------ 7. prompts and text
def test_prompt_init_is_uniform_and_names_are_official():
    torch.manual_seed(0)
    p = PromptLearner(20, 30, 512).prompts
    assert p.min() >= 0 and p.max() < 1 and abs(p.mean().item() - 0.5) < 0.01
    names = prompt_names("voc", official=True)
    assert names[14] == "player" and names[10] == "dining table" and names[19] == "tv monitor"
    assert prompt_names("voc")[14] == "person"


# ------------------------------------------------------------------ 8. WeakTr checkpoint import
K, D, L, H = 20, 384, 12, 6


def official_state_dict(seed=0, K=K, D=D, L=L, H=H, patches=196) -> dict:
    """Names and shapes of WeakTr's deit_small_WeakTr_patch16_224 (VOC, --reduction 8), random values."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.02: torch.randn(*s, generator=g) * std  # noqa: E731
    c = L * H
    sd = {"cls_token": r(1, K, D), "pos_embed": r(1, K + patches, D),
          "patch_embed.proj.weight": r(D, 3, 16, 16), "patch_embed.proj.bias": r(D),
          "norm.weight": 1 + r(D), "norm.bias": r(D),
          "head.weight": r(K, D, 3, 3), "head.bias": r(K),
          "adaptive_attention_fusion.fc.0.weight": r(c // 8, c, std=0.2),
          "adaptive_attention_fusion.fc.2.weight": r(c, c // 8, std=0.2)}
    for i in range(L):
        b = f"blocks.{i}."
        sd |= {b + "norm1.weight": 1 + r(D), b + "norm1.bias": r(D), b + "attn.qkv.weight": r(3 * D, D),
               b + "attn.qkv.bias": r(3 * D), b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
               b + "norm2.weight": 1 + r(D), b + "norm2.bias": r(D), b + "mlp.fc1.weight": r(4 * D, D),
               b + "mlp.fc1.bias": r(4 * D), b + "mlp.fc2.weight": r(D, 4 * D), b + "mlp.fc2.bias": r(D)}
    return sd


def reference_fine_cam(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """WeakTr models.py forward (eval, 224 px) written from the official maths on a state dict."""
    B = x.shape[0]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], 1) + sd["pos_embed"]
    weights = []
    for i in range(L):
        p = lambda n: sd[f"blocks.{i}.{n}"]  # noqa: E731
        y = F.layer_norm(t, (D,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = (y @ p("attn.qkv.weight").T + p("attn.qkv.bias")).reshape(B, -1, 3, H, D // H).permute(2, 0, 3, 1, 4)
        a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (D // H) ** -0.5).softmax(-1)
        weights.append(a)
        o = (a @ qkv[2]).transpose(1, 2).reshape(B, -1, D) @ p("attn.proj.weight").T + p("attn.proj.bias")
        t = t + o
        y = F.layer_norm(t, (D,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        t = t + F.gelu(y @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")) @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
    x_patch = t[:, K:].reshape(B, 14, 14, D).permute(0, 3, 1, 2)
    coarse = F.relu(F.conv2d(x_patch, sd["head.weight"], sd["head.bias"], padding=1))
    maps = torch.stack(weights).permute(1, 2, 0, 3, 4).reshape(B, H * L, K + 196, K + 196)
    pooled = F.adaptive_max_pool2d(maps, 1).flatten(1)
    w = torch.sigmoid(F.relu(pooled @ sd["adaptive_attention_fusion.fc.0.weight"].T)
                      @ sd["adaptive_attention_fusion.fc.2.weight"].T)
    fused = (maps * w[:, :, None, None]).mean(1)
    cams = fused[:, :K, K:].reshape(B, K, 14, 14) * coarse
    patch_attn = fused[:, K:, K:]
    return (patch_attn.unsqueeze(1) @ cams.reshape(B, K, -1, 1)).reshape(B, K, 14, 14)


S_CFG = MaskGeneratorCfg(pretrained=False, drop_path_rate=0.0)  # DeiT-S, VOC fusion (reduction 8, max)


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("weaktr") / "checkpoint_best_mIoU.pth"
    sd = official_state_dict()
    torch.save({"model": sd, "epoch": 37, "miou": 66.1}, path)
    return path, sd


def test_imported_weaktr_checkpoint_gives_the_official_cams(official_ckpt):
    path, sd = official_ckpt
    model = build_mask_generator(S_CFG, K, load_weights=False)
    metrics = import_weaktr_checkpoint(model, path)
    assert metrics["fusion"] == "maps" and len(metrics["sha256"]) == 64
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.eval()(x)["fine"]
        ref = reference_fine_cam(sd, x)
    assert ref.abs().max() > 0
    # two implementations of the same maths: float32 sums in another order, ~sqrt(n)*eps per dot product
    # (n <= 1536: ~5e-6) over 12 blocks: ~6e-5 of the output scale; tolerance 1e-4 of it. A class-order
    # or spatial mistake moves values by O(the scale): checked to fail the same tolerance.
    tol = 1e-4 * ref.abs().max().item()
    assert torch.allclose(ours, ref, rtol=0, atol=tol)
    for wrong in (ours.flip(1), ours.flip(-1), ours.roll(1, -2)):
        assert not torch.allclose(wrong, ref, rtol=0, atol=tol)


def test_import_rejects_missing_extra_and_misshaped_keys(tmp_path, official_ckpt):
    _, sd = official_ckpt
    model = build_mask_generator(S_CFG, K, load_weights=False)
    cases = {"missing": {k: v for k, v in sd.items() if k != "blocks.3.mlp.fc1.bias"},
             "extra": sd | {"dist_token": torch.zeros(1, 1, D)},
             "shape": sd | {"head.weight": torch.zeros(K, D, 1, 1)}}
    for name, bad in cases.items():
        torch.save({"model": bad}, tmp_path / f"{name}.pth")
        with pytest.raises(ValueError, match="train_cam.init_checkpoint") as e:
            import_weaktr_checkpoint(model, tmp_path / f"{name}.pth")
        assert {"missing": "blocks.3.mlp.fc1.bias", "extra": "dist_token", "shape": "head.weight"}[name] in str(e.value)


def test_phases_load_the_imported_warm_start_with_a_fresh_feature_fusion(tmp_path, official_ckpt):
    path, _ = official_ckpt
    warm = build_mask_generator(S_CFG, K, load_weights=False)
    import_weaktr_checkpoint(warm, path)
    save_mask_generator(warm, tmp_path / "model.pt", S_CFG, K)
    phase = build_mask_generator(S_CFG.model_copy(update={"fusion": "features"}), K, load_weights=False)
    fresh = load_weights_from(phase, tmp_path / "model.pt")
    assert fresh and all(k.startswith("fusion.attn_") for k in fresh)
    assert torch.equal(phase.head.weight, warm.head.weight) and torch.equal(phase.cls_tokens, warm.cls_tokens)


# ------------------------------------------------------------------ 11. weights_only loading
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_checkpoints_load_weights_only_and_refuse_code(tmp_path):
    m = build_mask_generator(TINY, 3)
    save_mask_generator(m, tmp_path / "model.pt", TINY, 3)
    torch.load(tmp_path / "model.pt", weights_only=True)  # plain tensors and data only
    assert load_mask_generator(tmp_path / "model.pt").num_classes == 3
    marker = tmp_path / "code-ran"
    torch.save({"format": "wsss.mask_generator/1", "payload": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt"):
        load_mask_generator(tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(ValueError, match="train_cam.init_checkpoint"):
        import_weaktr_checkpoint(m, tmp_path / "evil.pt")
    assert not marker.exists() and math.isfinite(1.0)


# ------------------------------------------------------------------ CAM export geometry
def test_export_crops_the_remainder_and_resizes_the_grid_once():
    """generate_attention_maps_ms: the stride-16 patch embedding drops the remainder rows and
    columns, the CAM grid is bilinearly resized straight to the image, flips are flipped back."""
    from pipeline.cam_inference import infer_cams
    from pipeline.models.mask_generator import normalize_numpy
    torch.manual_seed(0)
    m = build_mask_generator(TINY, 3).eval()
    image = (torch.rand(70, 100, 3) * 255).to(torch.uint8).numpy()
    # the coarse CAM (same geometry as the fine one) of a random model varies enough to compare
    ours = infer_cams(m, image, [1, 3], scales=(1.0,), flip=True, cam="coarse")
    x = normalize_numpy(image)[None]
    with torch.no_grad():
        grids = [m(x[..., :64, :96])["coarse"], m(x.flip(-1)[..., :64, :96])["coarse"]]
    up = [F.interpolate(g[:, [0, 2]], size=(70, 100), mode="bilinear", align_corners=False)[0] for g in grids]
    total = up[0] + up[1].flip(-1)
    lo, hi = total.amin((1, 2), keepdim=True), total.amax((1, 2), keepdim=True)
    assert (hi - lo).min() > 1e-3
    # infer_cams runs image and mirror as one batch of 2, the reference as two batches of 1: float32
    # sums in another order, ~sqrt(n)*eps per dot product over the blocks, a few 1e-5 of |CAM| at most
    # (test_cam_store: 7.2e-5 after normalisation on one CPU, 8e-7 here); min-max normalisation
    # amplifies by max|total| / (max - min) (~1.1 here). Tolerance 1e-4 times that.
    tol = 1e-4 * max(1.0, (total.abs().amax() / (hi - lo).amin()).item())
    ref = (total - lo) / (hi - lo + 1e-8)
    assert torch.allclose(torch.from_numpy(ours), ref, rtol=0, atol=tol)
    # the regressions this guards against fail that tolerance: mirror not flipped back, crop shifted
    # by a pixel (the remainder taken from the top/left), classes swapped
    bad = {"unflipped mirror": up[0] + up[1], "shifted crop": None, "class order": total.flip(0)}
    with torch.no_grad():
        shifted = [m(x[..., 1:65, 1:97])["coarse"], m(x.flip(-1)[..., 1:65, 1:97])["coarse"]]
    sup = [F.interpolate(g[:, [0, 2]], size=(70, 100), mode="bilinear", align_corners=False)[0] for g in shifted]
    bad["shifted crop"] = sup[0] + sup[1].flip(-1)
    for what, t in bad.items():
        t_lo, t_hi = t.amin((1, 2), keepdim=True), t.amax((1, 2), keepdim=True)
        diff = (torch.from_numpy(ours) - (t - t_lo) / (t_hi - t_lo + 1e-8)).abs().max().item()
        assert diff > 10 * tol, what


def test_train_cam_stage_imports_the_official_checkpoint_and_match_starts_from_it(tmp_path):
    """train_cam.init_checkpoint: the stage converts instead of training; match then keeps the
    imported backbone and head and starts a fresh feature fusion (official strict=False load)."""
    path = tmp_path / "checkpoint_best_mIoU.pth"
    sd = official_state_dict(3, K=20, D=192, L=12, H=3, patches=16)  # deit_tiny at 64 px (the test config)
    torch.save({"model": sd, "epoch": 5}, path)
    cfg = tiny_cfg(tmp_path, epochs=1)
    cfg = cfg.model_copy(update={"train_cam": cfg.train_cam.model_copy(update={"init_checkpoint": str(path)})})
    dirs = {s: run_stage(cfg, s) for s in ("prepare_data", "train_cam", "match")}
    manifest = json.loads((dirs["train_cam"] / "manifest.json").read_text())
    assert manifest["metrics"]["imported_from"] == str(path) and manifest["metrics"]["fusion"] == "maps"
    assert manifest["metrics"]["selection"].startswith(f"imported from {path}")
    assert not (dirs["train_cam"] / "train_cam_history.json").exists()
    warm, after = _state(dirs["train_cam"]), _state(dirs["match"])
    assert torch.equal(warm["cls_tokens"], sd["cls_token"]) and torch.equal(warm["patch_pos"], sd["pos_embed"][:, 20:])
    assert torch.equal(warm["vit.blocks.11.mlp.fc2.weight"], sd["blocks.11.mlp.fc2.weight"])
    assert torch.equal(after["vit.blocks.11.mlp.fc2.weight"], sd["blocks.11.mlp.fc2.weight"])


def test_clip_input_norm_and_lr_scaling_switches():
    """clip.input_norm: official feeds S-normalised images to CLIP unchanged (engine*.py), clip
    renormalises them; lr_scale_batch: null takes lr as the effective lr."""
    from pipeline.config import TrainCfg
    from pipeline.losses import StepContext
    from pipeline.models.mask_generator import MEAN, STD
    from pipeline.models.vl import to_vl_input
    vl = build_vl(ClipCfg(factory="pipeline.models.vl:tiny_random_clip", pretrained=None, allow_random_init=True,
                          image_size=64))
    x = torch.randn(2, 3, 64, 64)
    text = torch.zeros(3, 64)
    with torch.no_grad():
        official = StepContext(vl, text, MEAN, STD).encode(x)
        renorm = StepContext(vl, text, MEAN, STD, renormalise=True).encode(x)
        assert torch.equal(official, vl.encode_image(x))
        assert torch.equal(renorm, vl.encode_image(to_vl_input(x, MEAN, STD, vl)))
    assert not torch.allclose(official, renorm)
    assert TrainCfg(lr=0.01, batch_size=8, lr_scale_batch=None).effective_lr() == 0.01
    assert TrainCfg(lr=0.01, batch_size=8).effective_lr() == pytest.approx(0.01 * 8 / 512)
