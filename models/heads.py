"""Output heads shared by the families: how features become the next frame.

``residual`` (each family's own readout conv, zero-initialised by ``start_at_copy_last``) paints the
change from the last frame, so whatever moves is repainted and blurs as the model hedges.
``WarpHead`` moves pixels instead (the flow-warping predictors' idea, as deep voxel flow, Liu et al.
2017): it predicts a per-pixel displacement, reads the last frame there with bilinear sampling
(``grid_sample``), and blends in a residual for what the motion cannot explain (new content,
disocclusions, light) through a per-pixel mask:

    warped = last read at (x + dx, y + dy)
    output = warped + sigmoid(mask) * (last + residual - warped)

The conv producing (dx, dy, mask, residual) starts at zero, and a zero displacement reads the last
frame exactly, so an untrained model is copy-last bit for bit, as a residual one is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Per predicted frame the head makes 2 displacement channels (dx, dy, in pixels), 1 mask channel,
# then the frame's own channels of residual.
FLOW_CHANNELS, MASK_CHANNELS = 2, 1
HEADS = ("residual", "warp")


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Read ``image`` (N, C, H, W) at each pixel's position plus ``flow`` (N, 2, H, W) (dx, dy in pixels),
    bilinearly, edges repeated. A zero flow returns ``image`` exactly: the result is ``image`` plus the
    difference between sampling at the moved and at the unmoved positions, and the latter two are the
    same computation when nothing moved."""
    n, _, height, width = image.shape
    identity = torch.eye(2, 3, dtype=image.dtype, device=image.device).expand(n, 2, 3)
    base = F.affine_grid(identity, [n, 1, height, width], align_corners=False)  # (N, H, W, 2) in [-1, 1], x first
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=image.dtype, device=image.device)
    moved = base + flow.permute(0, 2, 3, 1) * scale  # pixels -> grid units
    sample = lambda grid: F.grid_sample(image, grid, mode="bilinear", padding_mode="border",  # noqa: E731
                                        align_corners=False)
    return image + (sample(moved) - sample(base))


class WarpHead(nn.Module):
    """Features (N, in_channels, H/scale, W/scale) and the frame to move (N, C, H, W) -> ``frames`` next
    frames (N, frames, C, H, W), each the moved frame blended with a residual (module docstring).

    ``scale`` > 1 (families working on space-to-depth patches) predicts each patch's pixels as
    channels and unfolds them (pixel shuffle), as those families' own readouts do.
    """

    def __init__(self, in_channels: int, frame_channels: int, frames: int = 1, scale: int = 1, kernel: int = 1):
        super().__init__()
        self.frames, self.frame_channels, self.scale = frames, frame_channels, scale
        self.per_frame = FLOW_CHANNELS + MASK_CHANNELS + frame_channels
        self.conv = nn.Conv2d(in_channels, frames * self.per_frame * scale * scale, kernel, padding=kernel // 2)
        nn.init.zeros_(self.conv.weight)  # an untrained head is copy-last exactly
        nn.init.zeros_(self.conv.bias)

    def in_patches(self, features: Tensor, last_patches: Tensor) -> Tensor:
        """For the families working on space-to-depth patches: the frame to move as patches
        (N, C*s*s, H/s, W/s) in, the one next frame as patches out (same shape)."""
        frame = F.pixel_shuffle(last_patches, self.scale) if self.scale > 1 else last_patches  # (N, C, H, W)
        out = self(features, frame)[:, 0]  # (N, C, H, W)
        return F.pixel_unshuffle(out, self.scale) if self.scale > 1 else out

    def forward(self, features: Tensor, last: Tensor) -> Tensor:
        out = self.conv(features)  # (N, frames*K*s*s, h, w)
        if self.scale > 1:
            out = F.pixel_shuffle(out, self.scale)  # (N, frames*K, H, W)
        n, _, height, width = out.shape
        out = out.reshape(n * self.frames, self.per_frame, height, width).float()  # (N*frames, K, H, W)
        flow = out[:, :FLOW_CHANNELS]  # (N*frames, 2, H, W)
        blend = torch.sigmoid(out[:, FLOW_CHANNELS:FLOW_CHANNELS + MASK_CHANNELS])  # (N*frames, 1, H, W)
        residual = out[:, FLOW_CHANNELS + MASK_CHANNELS:]  # (N*frames, C, H, W)
        source = last.float().repeat_interleave(self.frames, dim=0)  # (N*frames, C, H, W)
        warped = warp(source, flow)
        frames = warped + blend * (source + residual - warped)
        return frames.reshape(n, self.frames, self.frame_channels, height, width).to(last.dtype)
