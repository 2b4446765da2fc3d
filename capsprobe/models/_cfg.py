"""The timm pretrained-config entry shared by capsprobe's small-image models, and the model-family registry.

A native model family is registered in one step: :func:`register_family` registers the entry point in timm (as
``@register_model`` does) and records the class whose constructor arguments are the family's options, which
``capsprobe.models`` reads for :func:`~capsprobe.models.native_models`, the option allowlist and ``create_model``.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

__all__ = ["family_classes", "register_family", "small_image_cfg", "unregister_family"]

_FAMILIES: dict[str, type] = {}  # model name -> the class whose constructor arguments are its options
_Entry = TypeVar("_Entry", bound=Callable)
_TIMM_LOADER_KEYWORDS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def register_family(cls: type) -> Callable[[_Entry], _Entry]:
    """Decorator of a model entry point ``fn(pretrained=False, **kwargs) -> cls``: registers it in timm under its
    ``__name__`` and as a native capsprobe model whose options are ``cls.__init__``'s arguments. timm's loader
    keywords (``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``) never reach ``fn``.

    Example::

        @register_family(TinyNet)
        def tiny_net(pretrained: bool = False, **kwargs) -> TinyNet:
            return TinyNet(**kwargs)
    """

    def deco(fn: _Entry) -> _Entry:
        from timm.models import register_model  # timm is loaded by every module that registers a family

        @functools.wraps(fn)
        def entry(*args, **kwargs):
            for key in _TIMM_LOADER_KEYWORDS:
                kwargs.pop(key, None)
            return fn(*args, **kwargs)

        register_model(entry)
        _FAMILIES[fn.__name__] = cls
        return entry  # type: ignore[return-value]

    return deco


def unregister_family(name: str) -> None:
    """Remove ``name`` from capsprobe's families and timm's registry (tests that register a toy family).

    timm has no public way to unregister; its private ``_clear_model_entries`` is used where the installed release
    has it, else the name is taken out of each of the registry's tables that exists (never raises).
    """
    from timm.models import _registry

    _FAMILIES.pop(name, None)
    entries = getattr(_registry, "_model_entrypoints", None)
    if isinstance(entries, dict):
        entries.pop(name, None)
    clear = getattr(_registry, "_clear_model_entries", None)
    if callable(clear):
        clear(name)
        return
    module = getattr(_registry, "_model_to_module", {}).pop(name, None)
    by_module = getattr(_registry, "_module_to_models", None)
    if module is not None and isinstance(by_module, dict) and module in by_module:
        by_module[module].discard(name)
        if not by_module[module]:
            del by_module[module]
    tagged = getattr(_registry, "_model_with_tags", None)
    names = [*(tagged.pop(name, None) or []), name] if isinstance(tagged, dict) else [name]  # "model.tag" names too
    for table_name in ("_model_pretrained_cfgs", "_model_default_cfgs", "_deprecated_models"):
        table = getattr(_registry, table_name, None)
        if isinstance(table, dict):
            for n in names:
                table.pop(n, None)
    has_pretrained = getattr(_registry, "_model_has_pretrained", None)
    if isinstance(has_pretrained, set):
        has_pretrained.difference_update(names)


def family_classes() -> dict[str, type]:
    """Each native model name and the class its options are the constructor arguments of."""
    return dict(_FAMILIES)


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
