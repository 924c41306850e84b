"""Observation encoder: a dict of (B, To, ...) observations -> one conditioning vector (B, Dc).

- Images arrive uint8 (B, To, H, W, C) exactly as the dataset stores them (a float image is
  taken to be in [0, 1] already). Each is cropped (random in training, centre in eval; one crop
  per sample, the same for its To frames so motion between frames is not faked), scaled to
  [-1, 1] channels-first (the ResNet is trained from scratch, so ImageNet statistics would mean
  nothing, and [-1, 1] works for 1, 3 or 4 channels), and encoded by a GroupNorm ResNet-18,
  a pooling of its last feature map and a linear layer to `image_feature_dim`. The default
  pooling is a spatial softmax (as in robomimic and diffusion policy): keypoints that say
  *where* features are, which is what a manipulation policy needs; a global average pool
  ("avg") keeps what is present but throws away where.
- Low-dim keys (already normalized by the caller) are flattened ("identity") or passed through
  a small per-key, per-step MLP ("mlp").
- The output concatenates, in sorted key order, each key's features flattened over To.
"""

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from robopolicy.nets.resnet import RESNET18_WIDTHS, ResNet18GN

LOWDIM_MLP_DIM = 64  # per-step feature size of a low-dim key with lowdim="mlp"


def crop_size(height: int, width: int, ratio: float) -> tuple[int, int]:
    """(h, w) of a crop keeping `ratio` of each side (at least one pixel)."""
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, To, H, W, C) -> (B, To, h, w, C), the centred window."""
    height, width = images.shape[2:4]
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return images[:, :, top: top + size[0], left: left + size[1]]  # (B, To, h, w, C)


def random_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, To, H, W, C) -> (B, To, h, w, C); one random window per sample, shared over To."""
    batch, _, height, width, _ = images.shape
    dev = images.device
    top = torch.randint(0, height - size[0] + 1, (batch,), device=dev)  # (B,)
    left = torch.randint(0, width - size[1] + 1, (batch,), device=dev)  # (B,)
    rows = top[:, None] + torch.arange(size[0], device=dev)  # (B, h)
    cols = left[:, None] + torch.arange(size[1], device=dev)  # (B, w)
    b = torch.arange(batch, device=dev)[:, None, None]  # (B, 1, 1)
    out = images[b, :, rows[:, :, None], cols[:, None, :]]  # (B, h, w, To, C)
    return rearrange(out, "b h w to c -> b to h w c")


class SpatialSoftmax(nn.Module):
    """(N, C, h, w) -> (N, 2 * n_keypoints): a 1x1 conv to keypoint maps, a softmax over each
    map, and the expected (x, y) of each in [-1, 1] (Levine et al. 2016; robomimic's pooling)."""

    def __init__(self, in_channels: int, n_keypoints: int = 32):
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, n_keypoints, 1)
        self.out_dim = 2 * n_keypoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.keypoints(x)  # (N, K, h, w)
        h, w = maps.shape[-2:]
        weights = maps.flatten(2).softmax(-1).view_as(maps)  # (N, K, h, w), sums to 1 per map
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=weights.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=weights.dtype)
        expected_x = (weights.sum(-2) * xs).sum(-1)  # (N, K)
        expected_y = (weights.sum(-1) * ys).sum(-1)  # (N, K)
        return torch.cat([expected_x, expected_y], dim=-1)  # (N, 2K)


class GlobalAvgPool(nn.Module):
    """(N, C, h, w) -> (N, C)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.out_dim = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


POOLS = {"spatial_softmax": SpatialSoftmax, "avg": GlobalAvgPool}


class ImageEncoder(nn.Module):
    """(B, To, H, W, C) uint8 -> (B, To, feature_dim): crop, [-1, 1], ResNet-18-GN, pool, linear.

    ``resnet_widths`` are the channels of the ResNet's four stages (torchvision's by default;
    halving them costs a quarter of the compute, which is what makes CPU training bearable).
    """

    def __init__(self, in_channels: int, feature_dim: int = 64, crop_ratio: float = 0.9,
                 pool: str = "spatial_softmax",
                 resnet_widths: tuple[int, ...] = RESNET18_WIDTHS):
        super().__init__()
        if not 0.0 < crop_ratio <= 1.0:
            raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {sorted(POOLS)}, got {pool!r}")
        self.crop_ratio = crop_ratio
        self.backbone = ResNet18GN(in_channels, tuple(resnet_widths))
        self.pool = POOLS[pool](self.backbone.out_channels)
        self.proj = nn.Linear(self.pool.out_dim, feature_dim)

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        """Random crop in training mode, centre crop in eval mode: (B, To, h, w, C)."""
        size = crop_size(images.shape[2], images.shape[3], self.crop_ratio)
        return random_crop(images, size) if self.training else center_crop(images, size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.shape[0]
        x = rearrange(self.crop(images), "b to h w c -> (b to) c h w")  # frames, channels first
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()  # [0, 1]
        x = self.pool(self.backbone(x * 2.0 - 1.0))  # (B * To, pooled)
        return rearrange(self.proj(x), "(b to) f -> b to f", b=batch)


class ObsEncoder(nn.Module):
    """Encode {key: (B, To, ...)} -> (B, Dc); `out_dim` (= Dc) is known after construction.

    shapes: per-step feature shape of every key the encoder reads, e.g. {"eef_pos": (3,),
    "agentview_image": (84, 84, 3)}. image_keys: which of them are cameras, named by the
    caller (the store decides what is an image: ``robopolicy.data.store.is_image``). One
    ResNet per camera unless share_camera_encoder.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], n_obs_steps: int,
                 image_keys: Sequence[str] = (), crop_ratio: float = 0.9,
                 lowdim: str = "identity", image_feature_dim: int = 64,
                 share_camera_encoder: bool = False, pool: str = "spatial_softmax",
                 resnet_widths: tuple[int, ...] = RESNET18_WIDTHS):
        super().__init__()
        if lowdim not in ("identity", "mlp"):
            raise ValueError(f"lowdim must be 'identity' or 'mlp', got {lowdim!r}")
        self.shapes = {k: tuple(int(d) for d in s) for k, s in shapes.items()}
        self.n_obs_steps = n_obs_steps
        self.keys = sorted(self.shapes)
        self.image_keys = sorted(image_keys)
        self.lowdim = lowdim
        self._check_image_keys(share_camera_encoder)
        # ModuleLists indexed through dicts: observation keys may contain "." (not a module name)
        n_cams = 1 if share_camera_encoder and self.image_keys else len(self.image_keys)
        self.image_encoders = nn.ModuleList(
            ImageEncoder(self.shapes[k][-1], image_feature_dim, crop_ratio, pool, resnet_widths)
            for k in self.image_keys[:n_cams])
        self._image_index = {k: 0 if share_camera_encoder else i
                             for i, k in enumerate(self.image_keys)}
        lowdim_keys = [k for k in self.keys if k not in self._image_index]
        self._lowdim_index = {k: i for i, k in enumerate(lowdim_keys)}
        self.lowdim_mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(math.prod(self.shapes[k]), LOWDIM_MLP_DIM), nn.Mish(),
                          nn.Linear(LOWDIM_MLP_DIM, LOWDIM_MLP_DIM))
            for k in (lowdim_keys if lowdim == "mlp" else []))
        self.out_dim = n_obs_steps * sum(self._step_dim(k, image_feature_dim) for k in self.keys)

    def _check_image_keys(self, share: bool) -> None:
        for k in self.image_keys:
            if k not in self.shapes:
                raise KeyError(f"image key {k!r} has no shape; known keys: {self.keys}")
            if len(self.shapes[k]) != 3:
                raise ValueError(f"image key {k!r} must have a per-step (H, W, C) shape, "
                                 f"got {self.shapes[k]}")
        channels = {self.shapes[k][-1] for k in self.image_keys}
        if share and len(channels) > 1:
            raise ValueError(f"share_camera_encoder needs one channel count for all cameras, "
                             f"got {sorted(channels)} for {self.image_keys}")

    def _step_dim(self, key: str, image_feature_dim: int) -> int:
        if key in self._image_index:
            return image_feature_dim
        return LOWDIM_MLP_DIM if self.lowdim == "mlp" else math.prod(self.shapes[key])

    def _check_input(self, key: str, nobs: dict[str, torch.Tensor]) -> torch.Tensor:
        if key not in nobs:
            raise KeyError(f"observation key {key!r} missing from the encoder input "
                           f"(expects {self.keys})")
        x = nobs[key]
        expected = (self.n_obs_steps, *self.shapes[key])
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"observation {key!r} must have shape (B, To, ...)=(B, "
                             f"{', '.join(map(str, expected))}), got {tuple(x.shape)}")
        return x

    def forward(self, nobs: dict[str, torch.Tensor]) -> torch.Tensor:
        """nobs: {key: (B, To, ...)}, low-dim normalized, images uint8 -> (B, Dc)."""
        feats = []
        for key in self.keys:
            x = self._check_input(key, nobs)
            if key in self._image_index:
                f = self.image_encoders[self._image_index[key]](x)  # (B, To, F)
            elif self.lowdim == "mlp":
                f = self.lowdim_mlps[self._lowdim_index[key]](x.flatten(2).float())  # (B, To, F)
            else:
                f = x.float()  # (B, To, ...)
            feats.append(f.flatten(1))  # (B, To * F)
        return torch.cat(feats, dim=-1)  # (B, Dc)
