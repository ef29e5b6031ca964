"""Building blocks of the implicit-warping networks (supplementary section C, Figs. 8-9).

"Each DownBlock consists of one 3x3 convolution followed by a 2x2 max pooling layer. Each
UpBlock consists of a 3x3 convolution followed by a 2x bilinear upsampling. Each ResBlock
consists of a pre-activation residual block with 3x3 convolution."

GroupNorm is used instead of BatchNorm: it behaves the same at batch 1 (a call) and in
training, and needs no running statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    groups = 8
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
            norm(cout),
            nn.ReLU(inplace=True),
        )


class DownBlock(nn.Sequential):
    """3x3 conv, then 2x2 max pooling."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(ConvNormAct(cin, cout), nn.MaxPool2d(2))


class UpBlock(nn.Module):
    """3x3 conv, then 2x bilinear upsampling."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvNormAct(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="bilinear", align_corners=False)


class ResBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016) with 3x3 convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            norm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            norm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UNet(nn.Module):
    """Hourglass / U-Net: ``num_blocks`` DownBlocks, as many UpBlocks with skip connections.

    Input (B, cin, H, W) -> output (B, cin + block_expansion, H, W), as FOMM's Hourglass; the
    caller adds its own head. H and W must be divisible by 2**num_blocks.
    """

    def __init__(self, cin: int, block_expansion: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        chans = [cin] + [
            min(max_features, block_expansion * 2 ** (i + 1)) for i in range(num_blocks)
        ]
        self.down = nn.ModuleList(DownBlock(chans[i], chans[i + 1]) for i in range(num_blocks))
        up = []
        for i in reversed(range(num_blocks)):
            # The deepest UpBlock sees only the bottleneck; the others also get the skip.
            up_in = chans[i + 1] if i == num_blocks - 1 else 2 * chans[i + 1]
            up_out = chans[i] if i > 0 else block_expansion
            up.append(UpBlock(up_in, up_out))
        self.up = nn.ModuleList(up)
        self.out_channels = cin + block_expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for block in self.down:
            skips.append(block(skips[-1]))
        out = skips.pop()
        for block in self.up:
            out = block(out)
            out = torch.cat([out, skips.pop()], dim=1)
        return out
