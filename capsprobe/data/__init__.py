"""Data: registered data sets as uint8 splits, batch operations, the batch iterator, MultiMNIST pairs."""

from __future__ import annotations

from . import subsets, viewpoints  # noqa: F401  # register *-no69; smallnorb* and *-viewpoint
from .batches import (  # noqa: F401
    iterate_batches,
)
from .datasets import (  # noqa: F401
    DatasetSpec,
    DatasetUnavailableError,
    ImageSplit,
    Loader,
    Splits,
    UnknownDatasetError,
    default_data_root,
    get_spec,
    list_datasets,
    load_dataset,
    register_dataset,
)
from .multidigit import (  # noqa: F401
    MultiDigits,
    multimnist,
)
from .ops import (  # noqa: F401
    box_overlap,
    crop_images,
    ink_boxes,
    place_on_canvas,
    random_shifts,
    shift_images,
)

__all__ = [
    "DatasetSpec",
    "DatasetUnavailableError",
    "ImageSplit",
    "Loader",
    "MultiDigits",
    "Splits",
    "UnknownDatasetError",
    "box_overlap",
    "crop_images",
    "default_data_root",
    "get_spec",
    "ink_boxes",
    "iterate_batches",
    "list_datasets",
    "load_dataset",
    "multimnist",
    "place_on_canvas",
    "random_shifts",
    "register_dataset",
    "shift_images",
]
