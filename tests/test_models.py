"""Mask generator S, the frozen VL wrapper and the prompt learner (tiny random models)."""
import pytest
import timm
import torch

from pipeline.config import ClipCfg, MaskGeneratorCfg
from pipeline.semples.losses import StepContext, learn_prompts_step, match_step, refine_step
from pipeline.models.mask_generator import (MEAN, STD, build_mask_generator, load_mask_generator,
                                            save_mask_generator)
from pipeline.models.vl import PromptLearner, build_vl, class_text_features

TINY_S = MaskGeneratorCfg(backbone="deit_tiny_patch16_224", pretrained=False, img_size=64, drop_path_rate=0.0)
TINY_CLIP = ClipCfg(factory="pipeline.models.vl:tiny_random_clip", pretrained=None, allow_random_init=True,
                    image_size=64)


@pytest.fixture(scope="module")
def vl():
    return build_vl(TINY_CLIP)


def test_vit_generator_shapes_any_size_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = build_mask_generator(TINY_S, 5).eval()
    out = m(torch.randn(2, 3, 64, 64))
    assert out["fine"].shape == out["coarse"].shape == (2, 5, 4, 4)
    assert out["patch_attn"].shape == (2, 16, 16)
    for k in ("cls_logits", "patch_logits", "attn_logits"):
        assert out[k].shape == (2, 5)
    # non-multiple, non-square input: the remainder cropped (official) or padded; positions interpolated
    assert m.cams(torch.randn(1, 3, 70, 100)).shape == (1, 5, 4, 6)
    m.pad_input = True
    assert m.cams(torch.randn(1, 3, 70, 100)).shape == (1, 5, 5, 7)
    m.pad_input = False
    attn, grid = m.patch_attention(torch.randn(1, 3, 96, 64))
    assert grid == (6, 4) and attn.shape == (1, 24, 24)
    save_mask_generator(m, tmp_path / "model.pt", TINY_S, 5)
    m2 = load_mask_generator(tmp_path / "model.pt", "cpu")
    x = torch.randn(1, 3, 64, 64)
    assert not m2.training and torch.equal(m.cams(x), m2.cams(x))  # same weights, same path: exact
    with pytest.raises(ValueError, match="not a mask generator checkpoint"):
        torch.save({"x": 1}, tmp_path / "bad.pt")
        load_mask_generator(tmp_path / "bad.pt")


def test_backbone_weights_from_local_file(tmp_path):
    # the real loading path for offline users: a local timm checkpoint file
    src = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=0)
    torch.save(src.state_dict(), tmp_path / "deit_tiny.pth")
    cfg = TINY_S.model_copy(update={"pretrained": str(tmp_path / "deit_tiny.pth"), "img_size": 224})
    m = build_mask_generator(cfg, 3)
    assert torch.equal(m.vit.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert torch.equal(m.cls_tokens[0, 2], src.cls_token[0, 0])  # every class token starts from it
    with pytest.raises(FileNotFoundError, match="mask_generator.pretrained"):
        build_mask_generator(TINY_S.model_copy(update={"pretrained": str(tmp_path / "nope.pth")}), 3)


def test_bad_backbone_names_the_field():
    with pytest.raises(ValueError, match="mask_generator.backbone: unknown timm model 'no_such_vit'"):
        build_mask_generator(TINY_S.model_copy(update={"backbone": "no_such_vit"}), 3)
    with pytest.raises(ValueError, match="mask_generator.backbone: 'resnet18' is not a timm ViT"):
        build_mask_generator(TINY_S.model_copy(update={"backbone": "resnet18"}), 3)


def test_cnn_generator():
    cfg = MaskGeneratorCfg(arch="cnn", backbone="resnet18", pretrained=False, drop_path_rate=0.0)
    m = build_mask_generator(cfg, 4).eval()
    cams, attn, grid = m.cams_and_attention(torch.randn(1, 3, 64, 96))
    assert cams.shape == (1, 4, 2, 3) and attn.shape == (1, 6, 6) and grid == (2, 3)


def test_random_clip_needs_opt_in():
    with pytest.raises(ValueError, match="allow_random_init"):
        build_vl(ClipCfg(pretrained=None))
    with pytest.raises(ValueError, match="clip.factory"):
        build_vl(ClipCfg(factory="nowhere:nothing"))


def official_prompted_ids(n_prompts: int, placeholder: int = -1) -> list[int]:
    """SemPLeS CLIP-main/clip/model.py encode_btp, written by hand: <|startoftext|> 49406,
    _tokenizer.encode('a photo of ') = 320 1125 539, the learned tokens, _tokenizer.encoder['.'] = 13,
    <|endoftext|> 49407, then token 0 up to 77 (77 - 6 - P of them); features read at 5 + P."""
    return [49406, 320, 1125, 539] + [placeholder] * n_prompts + [13, 49407] + [0] * (77 - 6 - n_prompts)


def test_prompted_sentence_is_the_official_id_sequence(vl):
    tmpl, eot = vl.prompted_tokens(30)
    n = vl.n_prefix
    spliced = torch.cat([tmpl[:n], torch.full((30,), -1), tmpl[n:]])[:77]
    assert spliced.tolist() == official_prompted_ids(30)
    assert eot == 5 + 30
    # not what tokenizing the template gives ('.</w>' = 269)
    assert vl.tokenize(["a photo of ."])[0, 4].item() == 269


def test_prompts_change_text_features_and_eot_position(vl):
    # splicing the token embeddings of real words must equal encoding the official id sequence
    # with those words in place: proves the EOT feature is read at its moved position
    words_ids = vl.tokenize(["cat dog"])[0, 1:3]
    ids = torch.tensor(official_prompted_ids(2))
    ids[4:6] = words_ids
    words = vl.model.token_embedding(words_ids)[None]
    # two paths (spliced embeddings, moved EOT vs plain tokens): float32 sums in another order through 2
    # layers of width <= 256: ~2*sqrt(256)*eps ~ 4e-6 of the feature scale; 1e-5 of it. Reading another
    # token instead (the regression this catches) changes the feature by O(its scale).
    ref = vl.model.encode_text(ids[None])
    assert torch.allclose(vl.encode_prompted(words), ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    pl = PromptLearner(3, 30, vl.token_width)
    f1 = pl(vl)
    assert f1.shape[0] == 3
    with torch.no_grad():
        pl.prompts[1] += torch.randn_like(pl.prompts[1])  # (a constant shift would vanish in LayerNorm)
    f2 = pl(vl)
    assert torch.allclose(f1[0], f2[0]) and not torch.allclose(f1[1], f2[1], atol=1e-4)
    # the EOT moved by the 30 prompt tokens; reading open_clip's default argmax
    # position of the template (the unmoved EOT) would give another feature
    tmpl, eot = vl.prompted_tokens(30)
    assert eot == int(tmpl.argmax()) + 30 == 35


def _setup(vl):
    torch.manual_seed(0)
    s = build_mask_generator(TINY_S, 4)
    text = class_text_features(vl, ["cat", "dog", "car", "tree"], "a photo of {}.")
    ctx = StepContext(vl, text, MEAN, STD)
    x = torch.randn(2, 3, 64, 64)
    y = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    return s, ctx, x, y


def _grads(mod):
    return {n for n, p in mod.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_gradients_reach_only_the_trained_parameters(vl):
    s, ctx, x, y = _setup(vl)
    pl = PromptLearner(4, 30, vl.token_width)
    assert not any(p.requires_grad for p in vl.parameters())
    # phase 1: S only
    loss, _, n = match_step(s, ctx, x, y, 2.4, 0.1)
    assert n == 3
    loss.backward()
    assert "head.weight" in _grads(s) and "vit.blocks.0.attn.qkv.weight" in _grads(s)
    assert all(p.grad is None for p in vl.parameters())
    # phase 2: p_k only, S frozen and under no_grad
    s.zero_grad(set_to_none=True)
    s.requires_grad_(False)
    loss, _, _ = learn_prompts_step(s, ctx, pl(vl), x, y, 0.02, 1e-4)
    loss.backward()
    assert pl.prompts.grad is not None and pl.prompts.grad.abs().sum() > 0
    # classes without a positive image get no gradient
    assert pl.prompts.grad[3].abs().sum() == 0
    assert all(p.grad is None for p in s.parameters()) and all(p.grad is None for p in vl.parameters())
    # phase 3: S only; p_k frozen (features precomputed without grad)
    s.requires_grad_(True)
    pl.zero_grad(set_to_none=True)
    with torch.no_grad():
        pf = pl(vl)
    loss, stats, _ = refine_step(s, ctx, pf, x, y, 2.4, 0.05, 0.1)
    loss.backward()
    assert "head.weight" in _grads(s) and pl.prompts.grad is None
    assert all(p.grad is None for p in vl.parameters())
    assert torch.isclose(stats["loss"], stats["match"] + 0.05 * stats["refine"])
