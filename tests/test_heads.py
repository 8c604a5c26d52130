"""The warp head: a zero displacement reads the last frame exactly (an untrained model is copy-last),
a known displacement reads the known neighbour, and a tiny model learns a one-pixel translation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import FramecastError
from family_helpers import family_model, learn, moving_squares, videos
from models.heads import WarpHead, warp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("scale, frames, channels", [(1, 1, 3), (2, 3, 1), (4, 2, 3)])
def test_untrained_head_predicts_exactly_the_last_frame(scale, frames, channels):
    torch.manual_seed(0)
    head = WarpHead(in_channels=5, frame_channels=channels, frames=frames, scale=scale)
    last = torch.rand(2, channels, 16, 24)
    out = head(torch.randn(2, 5, 16 // scale, 24 // scale), last)
    assert out.shape == (2, frames, channels, 16, 24)
    assert torch.equal(out, last.unsqueeze(1).expand_as(out))


def test_warp_reads_the_displaced_pixel_with_edges_repeated():
    image = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 1, 4, 6)
    right = torch.zeros(1, 2, 4, 6)
    right[:, 0] = 1.0  # dx = 1: every pixel reads its right neighbour
    shifted = warp(image, right)
    assert torch.allclose(shifted[..., :-1], image[..., 1:], atol=1e-5)
    assert torch.allclose(shifted[..., -1], image[..., -1], atol=1e-5)  # the border repeats
    half_down = torch.zeros(1, 2, 4, 6)
    half_down[:, 1] = 0.5  # dy = 0.5: the mean of a pixel and the one below (bilinear)
    assert torch.allclose(warp(image, half_down)[..., :-1, :], (image[..., :-1, :] + image[..., 1:, :]) / 2, atol=1e-5)


def _translating_textures(count: int, frames: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(count, frames, 1, size, size): smooth random textures moving one pixel right per frame."""
    wide = torch.rand(count, 1, size, size + frames + 8, generator=generator)
    wide = F.avg_pool2d(F.pad(wide, (2, 2, 2, 2), mode="replicate"), 5, stride=1)  # smooth: bilinear reads work
    start = 4
    return torch.stack([wide[..., start - t: start - t + size] for t in range(frames)], dim=1)


class TinyWarper(nn.Module):
    """Two frames in, the next out: a conv sees the motion, the warp head moves the last frame."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.GELU())
        self.head = WarpHead(8, 1)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:  # (N, 2, 1, H, W) -> (N, 1, H, W)
        return self.head(self.features(pair.flatten(1, 2)), pair[:, -1])[:, 0]


def test_a_tiny_model_learns_a_one_pixel_translation_in_a_few_steps():
    torch.manual_seed(0)
    video = _translating_textures(16, 3, 16, torch.Generator().manual_seed(1))  # (16, 3, 1, 16, 16)
    pair, target = video[:, :2], video[:, 2]
    model = TinyWarper()
    copy_last = F.mse_loss(pair[:, -1], target).item()
    assert F.mse_loss(model(pair), target).item() == copy_last  # starts at copy-last exactly
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        loss = F.mse_loss(model(pair), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert F.mse_loss(model(pair), target).item() < 0.1 * copy_last
        flow = model.head.conv(model.features(pair.flatten(1, 2)))[:, :2]  # (N, 2, H, W): dx, dy
    # Content moving right by one pixel: each pixel reads one to its left, and nothing moves vertically.
    assert abs(flow[:, 0, :, 2:-2].median().item() + 1) < 0.15 and abs(flow[:, 1].median().item()) < 0.15


WARP_FAMILIES = ("unet", "simvp", "convlstm", "predrnn")


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("family", WARP_FAMILIES)
def test_an_untrained_family_with_the_warp_head_is_copy_last(family, residual):
    sampling = {"sampling": "none"} if family in ("convlstm", "predrnn") else {}  # else true frames are fed
    model = family_model(family, 3, 4, channels=3, head="warp", residual=residual, **sampling)
    x = videos(t=3, channels=3, size=16)
    last = x[:, -1:].expand(-1, 4, -1, -1, -1)
    with torch.no_grad():
        assert torch.equal(model(x), last)
        assert torch.equal(model.training_forward(x, videos(t=4, channels=3, size=16, seed=1), step=0).frames, last)
    assert "warped" in dict(model.summary())["output"]


@pytest.mark.parametrize("family", ["encoder_forecaster", "phydnet", "attention_gru"])
def test_families_without_the_warp_head_refuse_naming_the_setting(family):
    with pytest.raises(FramecastError, match=rf"model\.{family}\.head=warp is not available"):
        family_model(family, head="warp")


def test_a_tiny_unet_with_the_warp_head_learns_one_pixel_steps():
    data = moving_squares(16, 5, motion="step")  # (16, 5, 1, 16, 16): squares moving one pixel a frame
    torch.manual_seed(0)
    learned = learn(family_model("unet", 3, 2, head="warp"), data, t_in=3, steps=40, lr=1e-2)
    assert learned.before == pytest.approx(learned.copy_last)
    assert learned.after < 0.5 * learned.copy_last
