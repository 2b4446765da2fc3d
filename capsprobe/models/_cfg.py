"""The timm pretrained-config entry shared by capsprobe's small-image models."""

from __future__ import annotations

__all__ = ["small_image_cfg"]


def small_image_cfg(**kwargs) -> dict:
    """A timm default cfg for a 1x28x28, 10-class model trained from scratch (no weights to download)."""
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.0,),
        "std": (1.0,),
        "paper_ids": "arXiv:1710.09829",
        "license": "mit",
        **kwargs,
    }


def cfg_of(variant: str) -> dict:
    """The registered pretrained config of ``variant`` as a dict (timm's ``pretrained_cfg`` / ``default_cfg``)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(variant)
    if cfg is None:
        raise KeyError(f"{variant} has no registered config")
    return cfg.to_dict()
