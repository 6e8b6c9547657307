"""Facts of the official implementation (kuongan/SemPLeS models123.py, AAF.py,
main1-3.py, engine1-3.py; hustvl/WeakTr models.py, AAF.py, main.py,
datasets.py) pinned one by one. Tiny random models on CPU, except the checkpoint
import, which uses the official DeiT-S layout and shapes with random values."""
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ClipCfg, ConfigError, MaskGeneratorCfg, load_config
from pipeline.data.classes import prompt_names
from pipeline.semples.losses import train_cam_step
from pipeline.models.mask_generator import (build_mask_generator, load_mask_generator, load_weights_from,
                                            save_mask_generator)
from pipeline.models.vl import PromptLearner, build_vl
from pipeline.models.weaktr_import import import_weaktr_checkpoint, to_mask_generator_keys
from pipeline.semples.training import TrainImages
from stages.runner import run_stage
from test_semples_stages import tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
TINY = MaskGeneratorCfg(backbone="deit_tiny_patch16_224", pretrained=False, img_size=64, drop_path_rate=0.0)


# ------------------------------------------------------------------ 1. CLIP activation
def _is_quick_gelu(vl) -> bool:
    act = vl.model.transformer.resblocks[0].mlp.gelu
    return type(act).__name__ == "QuickGELU"


COCO_DATA = {"root": "data/coco-tiny", "splits": {
    "train": {"images": "images/train2017", "annotations": "annotations/instances_train2017.json"},
    "val": {"images": "images/val2017", "annotations": "annotations/instances_val2017.json"}}}


def full_config(name: str):
    data = COCO_DATA if name.startswith("coco") else {"root": "data/voc-tiny"}
    return load_config(ROOT / f"configs/{name}.yaml", overrides={"data": data})


@pytest.mark.parametrize("name", ["voc-full", "coco-full"])
def test_full_configs_build_a_quickgelu_clip(name):
    cfg = full_config(name)
    assert cfg.clip.pretrained == "openai" and cfg.clip.model == "ViT-B-32-quickgelu"
    # the same model without the hub download (no network here)
    vl = build_vl(cfg.clip.model_copy(update={"pretrained": None, "allow_random_init": True}))
    assert _is_quick_gelu(vl)


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


FEATURE_FUSION_KEYS = {"fusion.attn_head_ffn.0.weight", "fusion.attn_head_ffn.2.weight",
                       "fusion.attn_feat_ffn.0.weight", "fusion.attn_feat_ffn.0.bias",
                       "fusion.attn_feat_ffn.1.weight", "fusion.attn_feat_ffn.1.bias"}


def test_match_trains_only_head_and_fusion_starting_from_the_warm_start(match_run):
    cfg, dirs = match_run
    warm, after = _state(dirs["train_cam"]), _state(dirs["match"])
    frozen = [k for k in after if not k.startswith(("head.", "fusion."))]
    assert any(k.startswith("vit.blocks.") for k in frozen) and {"cls_tokens", "cls_pos", "patch_pos"} <= set(frozen)
    for k in frozen:
        assert torch.equal(after[k], warm[k]), f"{k} moved in match"
    assert not torch.equal(after["head.weight"], warm["head.weight"])
    # official warm start: the feature fusion the phases use, trained there; match loads every key
    assert {k for k in warm if k.startswith("fusion.")} == FEATURE_FUSION_KEYS
    assert {k for k in after if k.startswith("fusion.")} == FEATURE_FUSION_KEYS
    init = json.loads((dirs["match"] / "manifest.json").read_text())["metrics"]["init"]
    assert init["fresh"] == [] and init["loaded"] == len(warm)


def test_phases_start_from_the_trained_fusion(tmp_path):
    """load_weights_from (official strict=False, every key matching): the phase's fusion IS the
    warm start's, not a fresh one; a WeakTr V1 warm start leaves exactly the fusion fresh."""
    torch.manual_seed(0)
    feats = TINY.model_copy(update={"fusion": "features"})
    warm = build_mask_generator(feats, 3)
    with torch.no_grad():
        for p in warm.fusion.parameters():
            p.add_(1.0)  # "trained": differs from any fresh initialisation
    save_mask_generator(warm, tmp_path / "warm.pt", feats, 3)
    torch.manual_seed(1)
    phase = build_mask_generator(feats, 3, load_weights=False)
    keys = load_weights_from(phase, tmp_path / "warm.pt")
    assert keys["fresh"] == [] and set(keys["loaded"]) == set(warm.state_dict())
    for (n, a), b in zip(warm.state_dict().items(), phase.state_dict().values()):
        assert torch.equal(a, b), n
    v1 = build_mask_generator(TINY, 3)  # maps fusion
    save_mask_generator(v1, tmp_path / "v1.pt", TINY, 3)
    keys = load_weights_from(phase, tmp_path / "v1.pt")
    assert set(keys["fresh"]) == FEATURE_FUSION_KEYS and not any(k.startswith("fusion.") for k in keys["loaded"])


def test_trainable_all_moves_the_backbone(match_run, tmp_path):
    cfg, dirs = match_run
    from stages.match import STAGE as match
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


@pytest.mark.parametrize("fusion", ["features", "maps"])
def test_warm_start_fine_cam_loss_does_not_reach_the_coarse_cam(fusion):
    torch.manual_seed(0)
    m = build_mask_generator(TINY.model_copy(update={"fusion": fusion}), 3)
    m.set_recipe(detach_tokens=False, detach_coarse=True)
    out = m(torch.randn(2, 3, 64, 64))
    F.multilabel_soft_margin_loss(out["attn_logits"], torch.tensor([[1., 0, 1], [0, 1, 0]])).backward()
    assert m.head.weight.grad is None  # only the fusion learns from the fine CAM (models.py coarse_cam.detach())
    assert m.vit.blocks[0].attn.qkv.weight.grad is None
    first = m.fusion.attn_head_ffn[0] if fusion == "features" else m.fusion.fc[0]
    assert first.weight.grad.abs().sum() > 0
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


def test_official_warm_start_decays_every_parameter(match_run):
    """SemPLeS / WeakTr main.py at HEAD: create_optimizer(args, model.parameters()): timm gets an
    iterable, not a module, so it forms one group and every parameter (biases, norms, class
    tokens, positions too) decays with args.weight_decay."""
    cfg, dirs = match_run
    assert cfg.train_cam.recipe == "official"
    ck = torch.load(dirs["train_cam"] / "checkpoint.pt", weights_only=False)
    groups = ck["optimizer"]["param_groups"]
    n_params = len(_state(dirs["train_cam"]))  # every state tensor is a parameter (no buffers)
    assert [g["weight_decay"] for g in groups] == [cfg.train_cam.weight_decay]
    assert len(groups[0]["params"]) == n_params


def test_weaktr_v1_recipe_trains_the_map_fusion_with_filtered_decay(tmp_path):
    cfg = tiny_cfg(tmp_path, epochs=1)
    cfg = cfg.model_copy(update={"train_cam": cfg.train_cam.model_copy(update={"recipe": "weaktr_v1"})})
    d = {s: run_stage(cfg, s) for s in ("prepare_data", "train_cam")}["train_cam"]
    assert {k for k in _state(d) if k.startswith("fusion.")} == {"fusion.fc.0.weight", "fusion.fc.2.weight"}
    groups = torch.load(d / "checkpoint.pt", weights_only=False)["optimizer"]["param_groups"]
    assert sorted(g["weight_decay"] for g in groups) == [0.0, cfg.train_cam.weight_decay]


def test_weaktr_v1_warm_start_decays_only_matrices():
    """WeakTr V1 main.py: create_optimizer(args, model): timm's param_groups_weight_decay with
    the model's no_weight_decay() {pos_embed, cls_token}: 1-d tensors, biases, tokens and
    positions undecayed."""
    from pipeline.semples.phases import warm_start_param_groups
    m = build_mask_generator(TINY, 3)
    groups = warm_start_param_groups(m, "weaktr_v1", 0.03)
    names = {id(p): n for n, p in m.named_parameters()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert set(by_decay) == {0.0, 0.03}
    assert {"cls_tokens", "cls_pos", "patch_pos", "head.bias", "vit.blocks.0.norm1.weight",
            "vit.blocks.0.attn.qkv.bias"} <= by_decay[0.0]
    assert {"head.weight", "vit.blocks.0.attn.qkv.weight", "fusion.fc.0.weight"} <= by_decay[0.03]
    assert warm_start_param_groups(m, "official", 0.03) is None  # fit's single uniform group


# ------------------------------------------------------------------ 4. attention fusion
@pytest.mark.parametrize("layout", ["v2", "v1"])
def test_fusion_is_the_official_aaf_numerically(layout):
    """The whole forward (attention maps, features, fusion weights, fused CAM) of a deit-tiny-shaped
    official state dict at 64 px against the reference written from models.py / AAF.py. float32 on
    both paths with different op orders (einsum vs matmul, fused vs written-out layer norm): agreement
    to rtol 1e-4 of the CAM scale; a wrong head/channel split changes CAMs by orders more."""
    sd = official_state_dict(7, K=3, D=192, L=12, H=3, patches=16, layout=layout)
    fusion = "features" if layout == "v2" else "maps"
    model = build_mask_generator(TINY.model_copy(update={"fusion": fusion}), 3, load_weights=False)
    model.load_state_dict(to_mask_generator_keys(sd))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model.eval()(x)
        ref, ref_w = reference_fine_cam(sd, x, H=3)
    tol = 1e-4 * ref.abs().max().item()
    assert ref.abs().max() > 0 and not torch.allclose(ref_w[0], ref_w[1])  # image-dependent weights
    assert torch.allclose(ours["fusion_weights"], ref_w, rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours["fine"], ref, rtol=1e-4, atol=tol)
    if layout == "v2":  # the test can fail: splitting C into contiguous head blocks is another model
        wrong, wrong_w = reference_fine_cam(sd, x, H=3, split="contiguous")
        assert not torch.allclose(wrong_w, ref_w, rtol=1e-4, atol=1e-6)
        assert not torch.allclose(ours["fine"], wrong, rtol=1e-4, atol=tol)


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
    # timm create_transform as WeakTr datasets.py calls it (main.py: --train-interpolation bicubic,
    # default RandomResizedCrop scale/ratio, --aa rand-m9-mstd0.5-inc1, --reprob 0.25 --remode pixel --recount 1)
    rrc, flip, ra, erase = t[0], t[1], t[2], t[-1]
    assert (rrc.size, rrc.scale, rrc.ratio, str(rrc.interpolation)) == \
        ((64, 64), (0.08, 1.0), (3 / 4, 4 / 3), "InterpolationMode.BICUBIC")
    assert flip.p == 0.5
    # inc1: timm's _RAND_INCREASING_TRANSFORMS (magnitude grows the distortion); without inc1 the list
    # holds Posterize/Solarize/Color/... and this test fails
    assert [o.name for o in ra.ops] == [
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
        "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
        "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]
    assert {(o.prob, o.magnitude, o.magnitude_std) for o in ra.ops} == {(0.5, 9, 0.5)}
    assert ra.num_layers == 2 and ra.choice_weights is None
    assert (erase.probability, erase.mode, erase.min_count, erase.max_count, erase.per_pixel) == \
        (0.25, "pixel", 1, 1, True)
    flip_only = TrainImages(table, 64, augment="crop_flip")
    assert names(flip_only) == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "MaybeToTensor",
                                "Normalize"]
    f = flip_only.transform.transforms
    assert (f[0].scale, f[0].ratio, str(f[0].interpolation), f[1].p) == \
        ((0.08, 1.0), (3 / 4, 4 / 3), "InterpolationMode.BICUBIC", 0.5)
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


def official_state_dict(seed=0, K=K, D=D, L=L, H=H, patches=196, layout="v1", reduction=8) -> dict:
    """Names and shapes of WeakTr's deit_small_WeakTr_patch16_224 (VOC, --reduction 8), random
    values. layout v1: WeakTr V1's map fusion (fc.*); v2: WeakTr V2/HEAD and SemPLeS AAF
    (attn_head_ffn.*, attn_feat_ffn.*, --feat-reduction 8)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.02: torch.randn(*s, generator=g) * std  # noqa: E731
    c, hd = L * H, D // H
    sd = {"cls_token": r(1, K, D), "pos_embed": r(1, K + patches, D),
          "patch_embed.proj.weight": r(D, 3, 16, 16), "patch_embed.proj.bias": r(D),
          "norm.weight": 1 + r(D), "norm.bias": r(D),
          "head.weight": r(K, D, 3, 3), "head.bias": r(K)}
    a = "adaptive_attention_fusion."
    if layout == "v1":
        sd |= {a + "fc.0.weight": r(c // reduction, c, std=0.2), a + "fc.2.weight": r(c, c // reduction, std=0.2)}
    else:
        sd |= {a + "attn_head_ffn.0.weight": r(c // reduction, c, std=0.5),
               a + "attn_head_ffn.2.weight": r(c, c // reduction, std=0.5),
               a + "attn_feat_ffn.0.weight": r(hd // 8, hd, std=0.5), a + "attn_feat_ffn.0.bias": r(hd // 8),
               a + "attn_feat_ffn.1.weight": r(1, hd // 8, std=0.5), a + "attn_feat_ffn.1.bias": r(1)}
    for i in range(L):
        b = f"blocks.{i}."
        sd |= {b + "norm1.weight": 1 + r(D), b + "norm1.bias": r(D), b + "attn.qkv.weight": r(3 * D, D),
               b + "attn.qkv.bias": r(3 * D), b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
               b + "norm2.weight": 1 + r(D), b + "norm2.bias": r(D), b + "mlp.fc1.weight": r(4 * D, D),
               b + "mlp.fc1.bias": r(4 * D), b + "mlp.fc2.weight": r(D, 4 * D), b + "mlp.fc2.bias": r(D)}
    return sd


def reference_fine_cam(sd: dict, x: torch.Tensor, H: int = H, split: str = "interleaved"):
    """WeakTr / SemPLeS models.py forward (eval, square input at the checkpoint's grid) written
    from the official maths on a state dict: (fine CAM, fusion weights). Feature fusion (AAF.py
    class AAF): each block's attention output o (B, N, C) stacked to (L, B, N, C) and viewed
    as (L, B, N, C/H, H) -- channel c belongs to "head" c % H -- then permuted to
    (B, H*L, N, C/H); split='contiguous' (c // (C/H), the true head blocks) is the wrong variant."""
    B = x.shape[0]
    K, D = sd["cls_token"].shape[1:]
    L = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    g = int(round((sd["pos_embed"].shape[1] - K) ** 0.5))
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], 1) + sd["pos_embed"]
    weights, feats = [], []
    for i in range(L):
        p = lambda n: sd[f"blocks.{i}.{n}"]  # noqa: E731
        y = F.layer_norm(t, (D,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = (y @ p("attn.qkv.weight").T + p("attn.qkv.bias")).reshape(B, -1, 3, H, D // H).permute(2, 0, 3, 1, 4)
        a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (D // H) ** -0.5).softmax(-1)
        weights.append(a)
        o = (a @ qkv[2]).transpose(1, 2).reshape(B, -1, D) @ p("attn.proj.weight").T + p("attn.proj.bias")
        feats.append(o)
        t = t + o
        y = F.layer_norm(t, (D,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        t = t + F.gelu(y @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")) @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
    N = K + g * g
    x_patch = t[:, K:].reshape(B, g, g, D).permute(0, 3, 1, 2)
    coarse = F.relu(F.conv2d(x_patch, sd["head.weight"], sd["head.bias"], padding=1))
    maps = torch.stack(weights).permute(1, 2, 0, 3, 4).reshape(B, H * L, N, N)
    a = "adaptive_attention_fusion."
    if a + "fc.0.weight" in sd:  # WeakTr V1: squeeze-excitation over max-pooled maps
        pooled = F.adaptive_max_pool2d(maps, 1).flatten(1)
        w = torch.sigmoid(F.relu(pooled @ sd[a + "fc.0.weight"].T) @ sd[a + "fc.2.weight"].T)
    else:
        f = torch.stack(feats)  # (L, B, N, C)
        if split == "interleaved":
            f = f.view(L, B, N, D // H, H).permute(1, 4, 0, 2, 3)
        else:
            f = f.view(L, B, N, H, D // H).permute(1, 3, 0, 2, 4)
        f = f.reshape(B, H * L, N, D // H)
        # AAF.forward_weight: (b, c, n, m) -> (b, c*m, n, 1), pooled over tokens (VOC: max)
        pooled = F.adaptive_max_pool2d(f.permute(0, 1, 3, 2).reshape(B, H * L * (D // H), N, 1), 1)
        pooled = pooled.view(B * H * L, D // H)
        hw = pooled @ sd[a + "attn_feat_ffn.0.weight"].T + sd[a + "attn_feat_ffn.0.bias"]
        hw = (hw @ sd[a + "attn_feat_ffn.1.weight"].T + sd[a + "attn_feat_ffn.1.bias"]).view(B, H * L)
        w = torch.sigmoid(F.relu(hw @ sd[a + "attn_head_ffn.0.weight"].T) @ sd[a + "attn_head_ffn.2.weight"].T)
    fused = (maps * w[:, :, None, None]).mean(1)
    cams = fused[:, :K, K:].reshape(B, K, g, g) * coarse
    patch_attn = fused[:, K:, K:]
    return (patch_attn.unsqueeze(1) @ cams.reshape(B, K, -1, 1)).reshape(B, K, g, g), w


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
        ref, _ = reference_fine_cam(sd, x)
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
    path, _ = official_ckpt  # WeakTr V1: map fusion
    warm = build_mask_generator(S_CFG, K, load_weights=False)
    import_weaktr_checkpoint(warm, path)
    save_mask_generator(warm, tmp_path / "model.pt", S_CFG, K)
    phase = build_mask_generator(S_CFG.model_copy(update={"fusion": "features"}), K, load_weights=False)
    keys = load_weights_from(phase, tmp_path / "model.pt")
    assert set(keys["fresh"]) == FEATURE_FUSION_KEYS
    assert torch.equal(phase.head.weight, warm.head.weight) and torch.equal(phase.cls_tokens, warm.cls_tokens)


def test_v2_checkpoint_is_imported_and_the_phases_inherit_its_fusion(tmp_path):
    """WeakTr V2/HEAD / SemPLeS layout (attn_head_ffn + attn_feat_ffn): detected by its keys,
    imported with the official CAMs, and a phase loads every tensor of it, fusion included."""
    sd = official_state_dict(5, layout="v2")
    torch.save({"model": sd}, tmp_path / "v2.pth")
    feats = S_CFG.model_copy(update={"fusion": "features"})
    warm = build_mask_generator(feats, K, load_weights=False)
    m = import_weaktr_checkpoint(warm, tmp_path / "v2.pth")
    assert (m["fusion"], m["layout"]) == ("features", "WeakTr V2 / SemPLeS")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, _ = reference_fine_cam(sd, x)
        assert torch.allclose(warm.eval()(x)["fine"], ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    save_mask_generator(warm, tmp_path / "model.pt", feats, K)
    phase = build_mask_generator(feats, K, load_weights=False)
    keys = load_weights_from(phase, tmp_path / "model.pt")
    assert keys["fresh"] == [] and FEATURE_FUSION_KEYS <= set(keys["loaded"])
    assert torch.equal(phase.fusion.attn_feat_ffn[0].weight, sd["adaptive_attention_fusion.attn_feat_ffn.0.weight"])
    # a model of the other fusion kind, and an unknown fusion layout, are errors naming the keys
    with pytest.raises(ValueError, match="'features' attention fusion, the model a 'maps'"):
        import_weaktr_checkpoint(build_mask_generator(S_CFG, K, load_weights=False), tmp_path / "v2.pth")
    odd = {k: v for k, v in sd.items() if "attn_feat_ffn" not in k} | {
        "adaptive_attention_fusion.query": torch.zeros(1, 72)}
    torch.save({"model": odd}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"unknown attention-fusion layout.*'attn_head_ffn.0.weight'.*'query'"):
        import_weaktr_checkpoint(warm, tmp_path / "odd.pth")


# SemPLeS / WeakTr evaluation.py categories_coco: the official model's rows are ids 1..90 (row = id - 1)
OFFICIAL_COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe",
    "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "mirror", "dining table", "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "blender", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")


def test_coco_90_row_checkpoint_is_imported_by_category_id(tmp_path):
    """A synthetic official COCO checkpoint (90 class tokens / pos rows / head rows) imported into
    the 80-class model: each class gets the row of its category id, which the reference picks by
    name from the official category list; the CAMs equal the official forward on those rows."""
    from pipeline.data.classes import COCO_CLASSES
    assert len(OFFICIAL_COCO_NAMES) == 90
    sd = official_state_dict(11, K=90, D=192, L=12, H=3, patches=16, layout="v2")
    torch.save({"model": sd}, tmp_path / "coco.pth")
    cfg = TINY.model_copy(update={"fusion": "features"})
    model = build_mask_generator(cfg, 80, load_weights=False)
    m = import_weaktr_checkpoint(model, tmp_path / "coco.pth")
    assert m["class_rows"] == 90 and m["rows_selected_by"] == "COCO category id"
    rows = torch.tensor([OFFICIAL_COCO_NAMES.index(n) for n in COCO_CLASSES[1:]])
    assert torch.equal(model.cls_tokens, sd["cls_token"][:, rows])
    assert torch.equal(model.head.bias, sd["head.bias"][rows])
    ref_sd = sd | {"cls_token": sd["cls_token"][:, rows],
                   "pos_embed": torch.cat([sd["pos_embed"][:, rows], sd["pos_embed"][:, 90:]], 1),
                   "head.weight": sd["head.weight"][rows], "head.bias": sd["head.bias"][rows]}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref, _ = reference_fine_cam(ref_sd, x, H=3)
        ours = model.eval()(x)["fine"]
    # float32, different op orders on both paths: within 1e-4 of the CAM scale
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


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
    assert not marker.exists()


# ------------------------------------------------------------------ CAM export geometry
def test_export_crops_the_remainder_and_resizes_the_grid_once():
    """generate_attention_maps_ms: the stride-16 patch embedding drops the remainder rows and
    columns, the CAM grid is bilinearly resized straight to the image, flips are flipped back."""
    from pipeline.cams.inference import infer_cams
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
    imported backbone and head and, the checkpoint being WeakTr V1's, starts a fresh feature
    fusion (official strict=False load)."""
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
    # a V1 warm start has no feature-fusion tensors: match says they start fresh
    init = json.loads((dirs["match"] / "manifest.json").read_text())["metrics"]["init"]
    assert set(init["fresh"]) == FEATURE_FUSION_KEYS and init["loaded"] == len(warm) - 2  # fc.0, fc.2 dropped


def test_clip_input_norm_and_lr_scaling_switches():
    """clip.input_norm: official feeds S-normalised images to CLIP unchanged (engine*.py), clip
    renormalises them; lr_scale_batch: null takes lr as the effective lr."""
    from pipeline.config import TrainCfg
    from pipeline.semples.losses import StepContext
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
