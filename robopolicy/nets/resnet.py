"""ResNet-18 with GroupNorm in place of BatchNorm (16 channels per group), in plain torch.

BatchNorm misbehaves with small batches and with EMA weights, so (like diffusion policy) every
norm layer is a GroupNorm. No classifier head: forward returns the last feature map.
Layout and parameter shapes follow torchvision's resnet18 (11.18M parameters without fc).
"""

import torch
from torch import nn


def group_norm(channels: int, channels_per_group: int = 16) -> nn.GroupNorm:
    """GroupNorm with `channels_per_group` channels in each group."""
    return nn.GroupNorm(max(1, channels // channels_per_group), channels)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; stride 2 (and a 1x1 projection) when downsampling."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = group_norm(out_ch)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                          group_norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))  # (N, C, H', W')
        out = self.norm2(self.conv2(out))  # (N, C, H', W')
        return self.act(out + self.shortcut(x))


RESNET18_WIDTHS = (64, 128, 256, 512)  # channels of the four stages, as torchvision's


class ResNet18GN(nn.Module):
    """ResNet-18 trunk, GroupNorm: (N, C_in, H, W) -> (N, 512, ~H/32, ~W/32)."""

    out_channels = 512

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = RESNET18_WIDTHS):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False),
            group_norm(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        layers, prev = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(prev, width, stride), BasicBlock(width, width)]
            prev = width
        self.layers = nn.Sequential(*layers)
        self.out_channels = prev
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))  # (N, 512, h, w)
