"""COCO instance annotations as regions: masks per image, and mask files for a manifest."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from pycocotools import mask as mask_utils

from bias_audit.errors import DataError
from bias_audit.io._files import atomic_write

__all__ = ["regions_from_coco", "write_coco_masks"]


def regions_from_coco(
    instances_json: str | os.PathLike[str] | Mapping[str, Any],
    categories: Mapping[str, str],
) -> dict[str, dict[str, np.ndarray]]:
    """Union the instances of COCO categories into one bool mask per region and image.

    Polygons, uncompressed RLE (``counts`` a list) and compressed RLE (``counts`` a string) are
    decoded by pycocotools. Several categories may map to the same region; their instances are
    united too.

    Args:
        instances_json: path of a COCO ``instances_*.json``, or its parsed content.
        categories: COCO category name -> region name, e.g. ``{"tie": "tie", "person": "person"}``.

    Returns:
        ``file_name`` -> region -> (H, W) bool mask at the image's size. Every image of the file
        has an entry; a region without any instance in an image is left out (absent).

    Raises:
        DataError: an unreadable file, an unknown category (the message lists the available
            ones), an annotation of an unknown image, or a segmentation of the wrong size.
    """
    return {name: masks for name, _, _, masks in _iter_coco(instances_json, categories)}


def write_coco_masks(
    instances_json: str | os.PathLike[str] | Mapping[str, Any],
    categories: Mapping[str, str],
    out_dir: str | os.PathLike[str],
    *,
    manifest: pd.DataFrame | None = None,
    root: str | os.PathLike[str] | None = None,
    image_dir: str = "",
) -> pd.DataFrame:
    """Write COCO regions as mask PNGs and give the ``mask:<region>`` columns of a manifest.

    Each mask is written as ``<out_dir>/<file name>.<region>.png`` (mode L, 255 inside). Paths
    in the returned table are relative to ``root``, the folder of the manifest you will save
    (default: the parent of ``out_dir``), with ``/`` separators.

    Args:
        instances_json: path of a COCO ``instances_*.json``, or its parsed content.
        categories: COCO category name -> region name.
        out_dir: folder for the mask files (created if needed).
        manifest: an existing manifest table. Its rows are matched to COCO images by the file
            name of their ``image`` cell, and ``mask:<region>`` columns are added; rows without a
            COCO image get empty cells (region absent). Default: a new table with one row per
            COCO image and columns ``image`` (``image_dir/file_name``) and ``mask:<region>``.
        root: the manifest's folder; mask paths are written relative to it.
        image_dir: prefix of the ``image`` cells of a new table, relative to ``root``.

    Returns:
        The manifest table with ``mask:<region>`` columns (a copy when ``manifest`` is given).

    Raises:
        DataError: as :func:`regions_from_coco`; a manifest without an ``image`` column, with
            two rows of the same file name, or already holding a ``mask:<region>`` column.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(root) if root is not None else out.parent
    regions = sorted(set(categories.values()))
    columns = [f"mask:{r}" for r in regions]
    cells: dict[str, dict[str, str]] = {}
    for file_name, _, _, masks in _iter_coco(instances_json, categories):
        if Path(file_name).name in cells:
            raise DataError(
                f"COCO: two images named {Path(file_name).name!r}; file names must differ"
            )
        cells[Path(file_name).name] = {}
        stem = file_name.replace("/", "__").replace("\\", "__")
        for region, mask in masks.items():
            target = out / f"{stem}.{region}.png"
            with atomic_write(target) as fh:
                Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(fh, format="PNG")
            rel = Path(os.path.relpath(target.resolve(), base.resolve())).as_posix()
            cells[Path(file_name).name][f"mask:{region}"] = rel
        cells[Path(file_name).name]["image"] = (
            f"{image_dir.rstrip('/')}/{file_name}" if image_dir else file_name
        )
    if manifest is None:
        table = pd.DataFrame.from_records(list(cells.values()), columns=["image", *columns])
        return table.fillna("")
    if "image" not in manifest.columns:
        raise DataError(f"manifest: missing required column 'image'; columns are {list(manifest)}")
    taken = [c for c in columns if c in manifest.columns]
    if taken:
        raise DataError(f"manifest: already has column(s) {taken}")
    names = [Path(str(v)).name for v in manifest["image"]]
    seen: dict[str, int] = {}
    for row, name in enumerate(names, start=1):
        if name in seen:
            raise DataError(
                f"manifest: row {row}, column 'image': file name {name!r} also in row "
                f"{seen[name]}; cannot match COCO images by file name"
            )
        seen[name] = row
    table = manifest.copy()
    for c in columns:
        table[c] = [cells.get(name, {}).get(c, "") for name in names]
    return table


def _load(instances_json: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[str, Mapping]:
    if isinstance(instances_json, Mapping):
        return "instances_json", instances_json
    path = Path(instances_json)
    try:
        with open(path, encoding="utf-8") as fh:
            return str(path), json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read COCO annotations: {err}") from err


def _iter_coco(
    instances_json: str | os.PathLike[str] | Mapping[str, Any],
    categories: Mapping[str, str],
) -> Iterator[tuple[str, int, int, dict[str, np.ndarray]]]:
    # pycocotools is imported here: only COCO users pay for it.

    source, coco = _load(instances_json)
    try:
        cat_ids = {c["name"]: c["id"] for c in coco["categories"]}
        images = {im["id"]: (im["file_name"], im["height"], im["width"]) for im in coco["images"]}
        annotations = coco["annotations"]
    except (KeyError, TypeError) as err:
        raise DataError(f"{source}: not a COCO instances file (missing {err})") from err
    unknown = sorted(set(categories) - set(cat_ids))
    if unknown:
        raise DataError(
            f"{source}: unknown COCO categories {unknown}; available: {sorted(cat_ids)}"
        )
    region_of = {cat_ids[name]: region for name, region in categories.items()}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in annotations:
        if ann.get("category_id") not in region_of:
            continue
        if ann.get("image_id") not in images:
            raise DataError(
                f"{source}: annotation {ann.get('id')!r} refers to unknown image_id "
                f"{ann.get('image_id')!r}"
            )
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image_id, (file_name, height, width) in images.items():
        masks: dict[str, np.ndarray] = {}
        for ann in by_image.get(image_id, ()):
            decoded = _decode(mask_utils, ann, height, width, source)
            region = region_of[ann["category_id"]]
            masks[region] = masks[region] | decoded if region in masks else decoded
        yield file_name, height, width, masks


def _decode(mask_utils: Any, ann: Mapping[str, Any], h: int, w: int, source: str) -> np.ndarray:
    segm = ann.get("segmentation")
    where = f"{source}: annotation {ann.get('id')!r}"
    try:
        if isinstance(segm, list):
            if not segm:
                return np.zeros((h, w), dtype=bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
        elif isinstance(segm, Mapping) and "counts" in segm and "size" in segm:
            if list(segm["size"]) != [h, w]:
                raise DataError(
                    f"{where}: segmentation size {list(segm['size'])} is not the image's [{h}, {w}]"
                )
            if isinstance(segm["counts"], list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(dict(segm), h, w)
            else:
                rle = dict(segm)
        else:
            raise DataError(
                f"{where}: expected polygons or RLE in 'segmentation', got {segm!r:.60}"
            )
        with warnings.catch_warnings():
            # pycocotools' NumPy 2 DeprecationWarning is its own and says nothing to a user.
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle).astype(bool)
    except DataError:
        raise
    except Exception as err:  # pycocotools raises bare TypeError/ValueError on bad input
        raise DataError(f"{where}: cannot decode segmentation: {err}") from err
