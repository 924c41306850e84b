"""Normalization of observations and actions, kept inside a model and saved with it.

Each key gets an affine map ``y = x * scale + offset`` stored as buffers, so it moves with
``.to(device)`` and lands in the model's safetensors file. Modes:

- ``limits``: [min, max] -> [-1, 1]. Diffusion and flow models sample in a bounded range.
- ``gaussian``: (x - mean) / std.

Features with (near) zero range or std are centred but not scaled, so constant dimensions map
to 0 instead of exploding. Asking for a key that has no statistics is an error.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from robopolicy.errors import RobopolicyError

MODES = ("limits", "gaussian")
EPS = 1e-4


class MissingStatsError(RobopolicyError, KeyError):
    """A key was normalized that has no statistics (or was never fitted)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


def affine_from_stats(stats: Mapping[str, np.ndarray], mode: str) -> tuple[np.ndarray, ...]:
    """(scale, offset) of one key from its statistics (see :func:`data.stats.key_stats`)."""
    if mode == "limits":
        lo, hi = np.asarray(stats["min"], np.float64), np.asarray(stats["max"], np.float64)
        span = hi - lo
        flat = span < EPS
        scale = np.where(flat, 1.0, 2.0 / np.where(flat, 1.0, span))
        offset = np.where(flat, -(hi + lo) / 2, -1.0 - lo * scale)
    elif mode == "gaussian":
        mean, std = np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
        flat = std < EPS
        scale = np.where(flat, 1.0, 1.0 / np.where(flat, 1.0, std))
        offset = -mean * scale
    else:
        raise ValueError(f"unknown normalization mode {mode!r}; expected one of {MODES}")
    return scale.astype(np.float32), offset.astype(np.float32)


class Normalizer(nn.Module):
    """Per-key affine normalization with the feature shapes declared up front.

    Build it from statistics with :meth:`from_stats`, or with shapes only (buffers hold NaN)
    and fill it by ``load_state_dict`` when loading a checkpoint.
    """

    def __init__(self, feature_shapes: Mapping[str, tuple[int, ...]]):
        super().__init__()
        self.keys = list(feature_shapes)
        self.params = nn.ModuleDict()
        for key, shape in feature_shapes.items():
            if "." in key or not key:
                raise ValueError(f"normalizer key {key!r} must be non-empty and have no '.'")
            holder = nn.Module()
            holder.register_buffer("scale", torch.full(tuple(shape), float("nan")))
            holder.register_buffer("offset", torch.full(tuple(shape), float("nan")))
            self.params[key] = holder
        self._checked = False  # NaN check runs once, not on every call (it syncs the GPU)

    @classmethod
    def from_stats(cls, stats: Mapping[str, Mapping[str, np.ndarray]],
                   modes: str | Mapping[str, str] = "limits") -> Normalizer:
        """Fit every key of ``stats``; ``modes`` is one mode or a mode per key."""
        norm = cls({k: np.shape(s["min"]) for k, s in stats.items()})
        for key, key_stats in stats.items():
            mode = modes if isinstance(modes, str) else modes.get(key, "limits")
            norm.fit(key, *affine_from_stats(key_stats, mode))
        return norm

    def fit(self, key: str, scale: np.ndarray, offset: np.ndarray) -> None:
        params = self._params(key, check=False)
        params.scale.copy_(torch.as_tensor(scale))
        params.offset.copy_(torch.as_tensor(offset))
        self._checked = False

    def _load_from_state_dict(self, *args, **kwargs):
        self._checked = False
        return super()._load_from_state_dict(*args, **kwargs)

    def _params(self, key: str, check: bool = True) -> nn.Module:
        if key not in self.params:
            raise MissingStatsError(f"normalizer has no statistics for '{key}' "
                                    f"(it has: {', '.join(self.keys) or 'none'})")
        if check and not self._checked:
            self.check_fitted()
        return self.params[key]

    def check_fitted(self) -> None:
        """Every key has statistics (else one MissingStatsError line). Checked once: the check
        reads values (a GPU sync, a branch a compiler or a CUDA graph cannot trace), so
        callers that compile or capture the normalizer call it first."""
        unfitted = [k for k in self.keys if torch.isnan(self.params[k].scale).any()]
        if unfitted:
            raise MissingStatsError(f"normalizer keys {unfitted} were never fitted; build it "
                                    "with Normalizer.from_stats or load a checkpoint")
        self._checked = True

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        p = self._params(key)
        return x * p.scale + p.offset

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        p = self._params(key)
        return (y - p.offset) / p.scale

    def normalize_dict(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalize every entry of a dict (each key must have statistics)."""
        return {k: self.normalize(k, v) for k, v in batch.items()}
