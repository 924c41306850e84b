"""robopolicy.data: the zarr episode store and the pieces that serve it to training.

- :class:`EpisodeStore` reads and writes demonstrations (diffusion-policy layout, zarr 2 or 3).
- :class:`SequenceSampler` cuts padded windows of ``horizon`` steps from episodes.
- :func:`compute_stats` and :class:`Normalizer` scale observations and actions.
- :class:`EpisodeDataset` serves windows to a torch DataLoader (:func:`make_loader`).
- :func:`merge_stores` merges stores of one task into a new one (e.g. demos + corrections).

Names load on first use, so ``import robopolicy.data.store`` (and the CLI) does not pull in torch.
"""

import importlib

_EXPORTS = {
    "EpisodeStore": "store", "EpisodeWriter": "store", "SequenceSampler": "sampler",
    "split_episodes": "sampler", "compute_stats": "stats", "Normalizer": "normalizer",
    "EpisodeDataset": "dataset", "make_loader": "dataset", "merge_stores": "merge",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'robopolicy.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"robopolicy.data.{_EXPORTS[name]}"), name)
