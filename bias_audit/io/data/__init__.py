"""The data contract: manifests with groups and annotated regions, loaded so that every mask
stays aligned with its image.

    ds = load_manifest("data/test/manifest.csv", groups=["gender"], image_size=224)
    loader = DataLoader(ds, batch_size=32, collate_fn=collate, num_workers=2)
"""

from __future__ import annotations

from bias_audit.io.data._coco import regions_from_coco, write_coco_masks
from bias_audit.io.data._manifest import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AuditDataset,
    load_manifest,
    read_table,
)
from bias_audit.io.data._sample import Batch, Sample, collate

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AuditDataset",
    "Batch",
    "Sample",
    "collate",
    "load_manifest",
    "read_table",
    "regions_from_coco",
    "write_coco_masks",
]
