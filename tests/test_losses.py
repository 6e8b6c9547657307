"""SemPLeS losses equal the issue's formulas; masks and pairs are built as the official code does."""
import math

import torch

from pipeline.semples.losses import (build_pairs, match_loss, normalised_masks, prompt_loss, refine_loss,
                                     sim_max_loss, sim_min_loss)


def test_sim_losses_known_values():
    s = torch.tensor([0.5, 0.25, 2.0, -1.0])  # last two exercise the clamp [1e-4, 0.9999]
    assert math.isclose(sim_max_loss(s).item(),
                        -(math.log(0.5) + math.log(0.25) + math.log(0.9999) + math.log(1e-4)) / 4, rel_tol=1e-6)
    assert math.isclose(sim_min_loss(s).item(),
                        -(math.log(0.5) + math.log(0.75) + math.log(1e-4) + math.log(1 - 1e-4)) / 4, rel_tol=1e-4)  # float32 0.9999


def test_match_prompt_refine_formulas():
    fg, bg = torch.tensor([0.3, 0.6]), torch.tensor([0.2, 0.1])
    want = -(math.log(0.3) + math.log(0.6)) / 2 + 2.4 * -(math.log(0.8) + math.log(0.9)) / 2
    assert math.isclose(match_loss(fg, bg, 2.4).item(), want, rel_tol=1e-6)
    bgp, tp = torch.tensor([0.4, 0.7]), torch.tensor([0.5, 0.0])
    want = -(math.log(0.4) + math.log(0.7)) / 2 + 0.02 * (math.log(0.5) + math.log(1e-4)) / 2
    assert math.isclose(prompt_loss(bgp, tp, 0.02).item(), want, rel_tol=1e-6)
    fgp = torch.tensor([0.1, 0.95])
    assert math.isclose(refine_loss(fgp).item(), -(math.log(0.9) + math.log(0.05)) / 2, rel_tol=1e-5)


def test_normalised_masks_minmax_with_eps():
    cams = torch.zeros(1, 2, 2, 2)
    cams[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    m = normalised_masks(cams, 8, eps=0.1)
    assert m.shape == (1, 2, 8, 8)
    # align_corners=True keeps the corner values, so max = 3 / (3 + 0.1)
    assert math.isclose(m[0, 0].max().item(), 3 / 3.1, rel_tol=1e-6) and m[0, 0, 0, 0] == 0
    assert m[0, 1].abs().max() == 0  # a flat CAM gives an all-zero mask, no division by zero
    assert math.isclose(normalised_masks(cams, 8, 1e-4)[0, 0].max().item(), 3 / 3.0001, rel_tol=1e-6)


def test_build_pairs_one_per_positive_class():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    masks = torch.rand(2, 5, 4, 4)
    labels = torch.tensor([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    p = build_pairs(x, masks, labels)
    assert p.cls.tolist() == [1, 3, 0] and p.image.tolist() == [0, 0, 1]
    for j, (b, k) in enumerate([(0, 1), (0, 3), (1, 0)]):
        assert torch.equal(p.fg[j], masks[b, k] * x[b])
        assert torch.equal(p.bg[j], (1 - masks[b, k]) * x[b])
