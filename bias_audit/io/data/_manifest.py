"""Manifests: read, validate once, and serve aligned images and masks as a torch Dataset."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from bias_audit.core._naming import cell_name
from bias_audit.core.config import IMAGE_SIZE_RANGE, check_group_name
from bias_audit.errors import ConfigError, DataError
from bias_audit.io.data._sample import Sample
from bias_audit.io.data._transform import (
    plan_geometry,
    transform_box,
    transform_image,
    transform_mask,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_PIXELS",
    "AuditDataset",
    "load_manifest",
    "read_table",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: PIL modes that hold one value per pixel. Anything else (RGB, RGBA, LA ...) is not a mask.
MASK_MODES = frozenset({"1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_MASK_PREFIX = "mask:"
_BBOX_PREFIX = "bbox:"
#: Largest image (width x height) that is decoded: PIL's own decompression-bomb threshold. A
#: larger one is refused from its header, before any pixel is decoded (a 400 KB PNG can hold
#: 12000 x 12000 pixels, 430 MB once decoded to RGB).
MAX_PIXELS = 89_478_485
#: Integer modes and the full scale of their values: a 16-bit image is scaled by its bit depth,
#: not clipped at 255. PIL opens 16-bit PNGs as "I;16" (or "I" in older versions).
_INT_SCALE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}
_CHUNK = 1 << 20


class _RowError(Exception):
    """A problem with one cell; becomes a DataError or a skipped row."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


@dataclass(frozen=True)
class _Row:
    """A validated manifest row, reduced to what ``__getitem__`` needs (picklable)."""

    row: int
    id: str
    label: str
    image: str
    width: int
    height: int
    attrs: tuple[str, ...]
    # (region, "mask" | "bbox", absolute path | (x0, y0, x1, y1))
    regions: tuple[tuple[str, str, Any], ...]


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a .csv, .parquet or .jsonl manifest as a DataFrame of stripped strings.

    Empty cells, NaN and None become ``""``; lists become space-separated text. Integral
    floats (Parquet and JSON upcast integer columns with gaps to float) are written without
    ``.0``, so the three formats agree.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            _check_csv_header(path)
            df = pd.read_csv(
                path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig"
            )
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson"):
            df = pd.DataFrame(_read_jsonl(path))
        else:
            raise DataError(
                f"{path}: unknown manifest format {suffix!r}; use .csv, .parquet or .jsonl"
            )
    except DataError:
        raise
    except Exception as err:  # pandas/pyarrow raise many types for a bad file
        raise DataError(f"{path}: cannot read manifest: {err}") from err
    for name in df.columns:
        if not isinstance(name, str):
            raise DataError(f"{path}: column names must be text, got {name!r}")
    return pd.DataFrame({c: [_cell_str(v) for v in df[c].tolist()] for c in df.columns}, dtype=str)


def _check_csv_header(path: Path) -> None:
    # pandas renames a repeated header to "name.1", so a second "gender" column would be read
    # silently under another name.

    with open(path, encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh), [])
    names = [h.strip() for h in header]
    dupes = sorted({h for h in names if names.count(h) > 1})
    if dupes:
        raise DataError(f"{path}: repeated column name(s) {dupes} in the header")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {line_no}: invalid JSON: {err.msg}") from err
            if not isinstance(rec, dict):
                raise DataError(f"{path}: line {line_no}: expected a JSON object")
            records.append(rec)
    return records


def _cell_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple | np.ndarray):
        # A box stored as a JSON array or Parquet list reads like its text form "x0 y0 x1 y1".
        return " ".join(_cell_str(v) for v in value)
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        if float(value).is_integer():
            return str(int(value))
    return str(value).strip()


class AuditDataset(Dataset):
    """A validated manifest: a torch Dataset of :class:`Sample` s. Build it with
    :func:`load_manifest`.

    Attributes:
        path: the manifest file.
        root: the folder relative paths are resolved against (the manifest's folder).
        classes: class names; ``Sample.label`` indexes this list.
        regions: region names, sorted (from ``mask:<region>`` and ``bbox:<region>`` columns).
        groups: group attributes, in the order given.
        table: the validated rows (strings), indexed by 1-based manifest row number ``row``.
        skipped: rows skipped with ``on_error="skip"``: columns ``row``, ``column``, ``reason``.
        image_size, resize, mean, std: the transform.
    """

    def __init__(
        self,
        *,
        path: Path,
        root: Path,
        rows: list[_Row],
        table: pd.DataFrame,
        skipped: pd.DataFrame,
        n_rows: int,
        classes: Sequence[str],
        regions: Sequence[str],
        groups: Sequence[str],
        image_size: int,
        resize: str,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        min_group_size: int,
        augment: bool,
        seed: int,
    ) -> None:
        self.path = path
        self.root = root
        self._rows = rows
        self.table = table
        self.skipped = skipped
        self._n_rows = n_rows
        self.classes = list(classes)
        self.regions = list(regions)
        self.groups = list(groups)
        self.image_size = image_size
        self.resize = resize
        self.mean = mean
        self.std = std
        self.min_group_size = min_group_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return (
            f"AuditDataset({str(self.path)!r}, n={len(self)}, classes={self.classes}, "
            f"regions={self.regions}, groups={self.groups}, skipped={len(self.skipped)})"
        )

    @property
    def ids(self) -> list[str]:
        """Sample ids in dataset order."""
        return [r.id for r in self._rows]

    @property
    def labels(self) -> list[int]:
        """Class indices in dataset order, without decoding any image."""
        return [self._class_index[r.label] for r in self._rows]

    def sample_cells(self) -> list[str]:
        """Each sample's group cell name (as in :meth:`cells`), in dataset order."""
        return [cell_name([*r.attrs, r.label]) for r in self._rows]

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation of this epoch. Call it before creating the epoch's iterator
        (DataLoader workers copy the dataset then; with ``persistent_workers`` they would not)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = int(index) % len(self)  # samplers may hand numpy or tensor integers
        r = self._rows[index]
        generator = None
        if self.augment:
            # Seeded from (seed, epoch, index): the same sample is augmented the same way in
            # any worker, and differently in each epoch; the global RNG is never touched.
            state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
            generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        pixels = _decode_rgb(r.image, r.row)
        if pixels.shape[:2] != (r.height, r.width):
            raise DataError(
                f"{r.image}: row {r.row}: image size changed since the manifest was loaded"
            )
        image = torch.from_numpy(pixels).permute(2, 0, 1)  # (3, H, W) uint8, a view
        geometry = plan_geometry(
            r.width, r.height, self.image_size, self.resize, generator=generator
        )
        mean = torch.tensor(self.mean, dtype=torch.float32)
        std = torch.tensor(self.std, dtype=torch.float32)
        out_image = transform_image(image, geometry, mean, std)
        masks: dict[str, Tensor] = {}
        present: dict[str, bool] = {}
        given: dict[str, list[tuple[str, Any]]] = {}
        for region, kind, value in r.regions:
            given.setdefault(region, []).append((kind, value))
        for region in self.regions:
            mask = torch.zeros((self.image_size, self.image_size), dtype=torch.bool)
            for kind, value in given.get(region, ()):
                if kind == "bbox":
                    mask |= transform_box(value, geometry)
                else:
                    mask |= transform_mask(_decode_mask(value, r.row), geometry)
            masks[region] = mask
            present[region] = region in given
        return Sample(
            image=out_image,
            label=self._class_index[r.label],
            id=r.id,
            index=index,
            attrs=dict(zip(self.groups, r.attrs, strict=True)),
            masks=masks,
            present=present,
        )

    def cells(self) -> pd.DataFrame:
        """Group cells: every combination of observed attribute values and class, with counts.

        Returns:
            DataFrame with columns ``cell`` (``cell_name([*values, label])``), one column per
            group attribute, ``label``, ``n`` (int; 0 for a combination with no image) and
            ``small`` (``n < min_group_size``). Sorted by attribute values, then class order.
        """
        counts = Counter((*r.attrs, r.label) for r in self._rows)
        levels = [sorted({r.attrs[i] for r in self._rows}) for i in range(len(self.groups))]
        records = []
        for combo in itertools.product(*levels, self.classes):
            n = counts.get(combo, 0)
            records.append(
                {
                    "cell": cell_name(combo),
                    **dict(zip(self.groups, combo[:-1], strict=True)),
                    "label": combo[-1],
                    "n": n,
                    "small": n < self.min_group_size,
                }
            )
        columns = ["cell", *self.groups, "label", "n", "small"]
        out = pd.DataFrame.from_records(records, columns=columns)
        return out.astype({"n": "int64", "small": "bool"})

    def fingerprint(self) -> str:
        """``"sha256:<hex>"`` over the manifest's bytes and every image and mask of the loaded
        rows, in row order (image, then masks by region). Computed once, then cached."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            _hash_file(h, self.path)
            for r in self._rows:
                _hash_file(h, Path(r.image))
                for _, kind, value in sorted(r.regions, key=lambda t: (t[0], t[1])):
                    if kind == "mask":
                        _hash_file(h, Path(value))
            self._fingerprint = f"sha256:{h.hexdigest()}"
        return self._fingerprint

    def skip_summary(self) -> str:
        """One line: how many rows were skipped, and for which columns."""
        if self.skipped.empty:
            return f"{self.path}: all {self._n_rows} rows loaded, none skipped"
        by_column = Counter(self.skipped["column"])
        parts = ", ".join(f"{c}: {n}" for c, n in sorted(by_column.items()))
        return (
            f"{self.path}: {len(self.skipped)} of {self._n_rows} rows skipped ({parts}); "
            "see .skipped for the reasons"
        )


def _hash_file(h: Any, path: Path) -> None:
    # The length prefix keeps two files' bytes from running together ambiguously.
    h.update(path.stat().st_size.to_bytes(8, "little"))
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)


def _decode_rgb(path: str, row: int) -> np.ndarray:
    try:
        with _open_image(path) as im:
            return _to_rgb(im)
    except _RowError as err:
        raise DataError(f"{path}: row {row}: {err.reason}") from err
    except Exception as err:
        raise DataError(f"{path}: row {row}: cannot decode image: {err}") from err


def _to_rgb(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8. Integer images wider than 8 bits are scaled by their bit depth
    (``convert("RGB")`` would clip a 16-bit image at 255, i.e. nearly all white)."""
    scale = _INT_SCALE.get(im.mode)
    if scale is None:
        return np.array(im.convert("RGB"))
    gray = np.asarray(im).astype(np.float64) / scale
    gray = np.round(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _mask_array(im: Image.Image) -> np.ndarray:
    """(H, W) bool: nonzero pixels are inside; NaN is never inside."""
    arr = np.asarray(im)
    if arr.dtype.kind == "f":
        return np.isfinite(arr) & (arr != 0)
    return arr != 0


def _decode_mask(path: str, row: int) -> np.ndarray:
    try:
        with _open_image(path, "mask") as im:
            return _mask_array(im)
    except _RowError as err:
        raise DataError(f"{path}: row {row}: {err.reason}") from err
    except Exception as err:
        raise DataError(f"{path}: row {row}: cannot decode mask: {err}") from err


def _open_image(path: str | Path, column: str = "image", cell: str = "") -> Image.Image:
    """``Image.open`` (lazy: only the header is read), refused over MAX_PIXELS before any
    pixel is decoded. PIL's own bomb warning and error are replaced by that one refusal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as err:
            named = f"{cell!r} " if cell else ""
            raise _RowError(
                column, f"{named}is over the limit of {MAX_PIXELS} pixels: {err}"
            ) from err
    try:
        _check_pixels(im, column, cell)
    except BaseException:
        im.close()
        raise
    return im


def _check_pixels(im: Image.Image, column: str = "image", cell: str = "") -> None:
    width, height = im.size
    if width * height > MAX_PIXELS:
        named = f"{cell!r} " if cell else ""
        raise _RowError(
            column,
            f"{named}{width}x{height} = {width * height} pixels is over the limit of {MAX_PIXELS} "
            "(MAX_PIXELS); downscale the file",
        )


def load_manifest(
    path: str | os.PathLike[str],
    *,
    label: str = "label",
    groups: Sequence[str] = (),
    classes: Sequence[str] | None = None,
    image_size: int = 224,
    resize: Literal["crop", "letterbox"] = "crop",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    id_column: str = "id",
    on_error: Literal["raise", "skip"] = "raise",
    allow_outside_root: bool = False,
    min_group_size: int = 20,
    augment: bool = False,
    seed: int = 0,
) -> AuditDataset:
    """Load and validate a manifest (.csv, .parquet or .jsonl; one row per image).

    Every row is checked once, here: paths stay inside the manifest's folder, images and masks
    exist and are readable (PIL ``verify``), boxes are well formed and inside their image, masks
    are single-channel, labels are in ``classes``, ids are unique. Row numbers in messages are
    1-based data rows (the first row after the header is row 1).

    Args:
        path: the manifest; relative image and mask paths are resolved against its folder.
        label: the column holding class names.
        groups: attribute columns that define group cells, e.g. ``["gender"]``.
        classes: class names in index order; default: the sorted distinct labels.
        image_size: side S of the square output.
        resize: ``"crop"`` (resize the short side to S, centre crop) or ``"letterbox"``
            (resize the long side to S, pad with the mean colour and masks with False).
        mean, std: per-channel normalisation of the [0, 1] RGB image.
        id_column: the column of unique sample ids; if absent, the ``image`` cell is the id.
        on_error: ``"raise"`` a :class:`DataError` at the first bad row, or ``"skip"`` bad rows
            and list them in ``.skipped``.
        allow_outside_root: accept absolute paths and paths resolving outside the folder.
        min_group_size: cells with fewer images are flagged ``small`` by ``cells()``.
        augment: random flip, zoom and crop shift, reproducible from (seed, epoch, index).
        seed: seed of the augmentation.

    Raises:
        DataError: a bad manifest, or a bad row with ``on_error="raise"``.
        ConfigError: a bad argument.
    """
    opts = _check_options(
        label=label, groups=groups, classes=classes, image_size=image_size, resize=resize,
        mean=mean, std=std, id_column=id_column, on_error=on_error,
        min_group_size=min_group_size, seed=seed,
    )  # fmt: skip
    manifest = Path(path)
    df = read_table(manifest)
    # The folder the manifest appears in (even if the manifest itself is a symlink), resolved
    # so that it compares with resolved image paths.
    root = Path(os.path.abspath(manifest)).parent.resolve()
    if df.empty:
        raise DataError(f"{manifest}: the manifest has no rows")

    required = ["image", label, *opts["groups"]]
    if id_column != "id":
        required.append(id_column)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{manifest}: missing required column(s) {missing}; columns are {list(df.columns)}"
        )
    region_columns: list[tuple[str, str, str]] = []  # (column, region, kind)
    for col in df.columns:
        for prefix, kind in ((_MASK_PREFIX, "mask"), (_BBOX_PREFIX, "bbox")):
            if col.startswith(prefix):
                region = col[len(prefix) :].strip()
                if not region:
                    raise DataError(f"{manifest}: column {col!r} has no region name")
                region_columns.append((col, region, kind))
    bad_groups = [g for g in opts["groups"] if g == "image" or g == label or ":" in g]
    if bad_groups:
        raise ConfigError(f"groups: {bad_groups} are not attribute columns")

    checker = _RowChecker(
        manifest=manifest, root=root, allow_outside_root=allow_outside_root,
        label=label, groups=opts["groups"], classes=opts["classes"],
        id_column=id_column if id_column in df.columns else "image",
        region_columns=region_columns,
    )  # fmt: skip
    rows: list[_Row] = []
    kept: list[int] = []
    skipped: list[dict[str, Any]] = []
    first_row_of_id: dict[str, int] = {}
    for i, rec in enumerate(df.to_dict(orient="records")):
        row_no = i + 1
        try:
            # _read_table checked every column name is text and made every cell a str.
            parsed = checker.check(row_no, cast("dict[str, str]", rec))
            if parsed.id in first_row_of_id:
                raise _RowError(
                    checker.id_column,
                    f"duplicate id {parsed.id!r} (first in row {first_row_of_id[parsed.id]})",
                )
        except _RowError as err:
            if on_error == "raise":
                raise DataError(
                    f"{manifest}: row {row_no}, column {err.column!r}: {err.reason}"
                ) from err
            skipped.append({"row": row_no, "column": err.column, "reason": err.reason})
            continue
        first_row_of_id[parsed.id] = row_no
        rows.append(parsed)
        kept.append(i)
    if not rows:
        first = skipped[0]
        raise DataError(
            f"{manifest}: all {len(df)} rows skipped; first: row {first['row']}, "
            f"column {first['column']!r}: {first['reason']}"
        )

    table = df.iloc[kept].copy()
    if id_column not in table.columns:
        table[id_column] = [r.id for r in rows]
    table.index = pd.Index([k + 1 for k in kept], name="row")
    skipped_df = pd.DataFrame.from_records(skipped, columns=["row", "column", "reason"])
    skipped_df = skipped_df.astype({"row": "int64", "column": str, "reason": str})
    classes_out = opts["classes"] or sorted({r.label for r in rows})
    return AuditDataset(
        path=manifest, root=root, rows=rows, table=table, skipped=skipped_df, n_rows=len(df),
        classes=classes_out, regions=sorted({c[1] for c in region_columns}),
        groups=opts["groups"], image_size=image_size, resize=resize, mean=opts["mean"],
        std=opts["std"], min_group_size=min_group_size, augment=bool(augment), seed=seed,
    )  # fmt: skip


def _check_options(**kw: Any) -> dict[str, Any]:
    if not isinstance(kw["label"], str) or not kw["label"]:
        raise ConfigError(f"label: expected a column name, got {kw['label']!r}")
    if not isinstance(kw["id_column"], str) or not kw["id_column"]:
        raise ConfigError(f"id_column: expected a column name, got {kw['id_column']!r}")
    groups = kw["groups"]
    groups = (groups,) if isinstance(groups, str) else tuple(groups)
    for g in groups:
        if not isinstance(g, str) or not g:
            raise ConfigError(f"groups: expected column names, got {g!r}")
        why = check_group_name(g)
        if why:
            raise ConfigError(f"groups: {why}")
    if len(set(groups)) != len(groups):
        raise ConfigError(f"groups: repeated names in {list(groups)}")
    classes = kw["classes"]
    if classes is not None:
        if isinstance(classes, str) or not all(isinstance(c, str) and c for c in classes):
            raise ConfigError(f"classes: expected a list of class names, got {classes!r}")
        classes = list(classes)
        if not classes or len(set(classes)) != len(classes):
            raise ConfigError(f"classes: expected distinct names, got {classes}")
    size = kw["image_size"]
    low, high = IMAGE_SIZE_RANGE
    if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high:
        raise ConfigError(f"image_size: expected an integer between {low} and {high}, got {size!r}")
    if kw["resize"] not in ("crop", "letterbox"):
        raise ConfigError(f"resize: expected 'crop' or 'letterbox', got {kw['resize']!r}")
    if kw["on_error"] not in ("raise", "skip"):
        raise ConfigError(f"on_error: expected 'raise' or 'skip', got {kw['on_error']!r}")
    norm = {}
    for name in ("mean", "std"):
        try:
            values = tuple(float(v) for v in kw[name])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{name}: expected 3 numbers, got {kw[name]!r}") from err
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise ConfigError(f"{name}: expected 3 finite numbers, got {kw[name]!r}")
        norm[name] = values
    if min(norm["std"]) <= 0:
        raise ConfigError(f"std: expected positive numbers, got {kw['std']!r}")
    mgs = kw["min_group_size"]
    if isinstance(mgs, bool) or not isinstance(mgs, int) or mgs < 0:
        raise ConfigError(f"min_group_size: expected an integer >= 0, got {mgs!r}")
    if isinstance(kw["seed"], bool) or not isinstance(kw["seed"], int):
        raise ConfigError(f"seed: expected an integer, got {kw['seed']!r}")
    return {"groups": groups, "classes": classes, **norm}


@dataclass(frozen=True)
class _RowChecker:
    manifest: Path
    root: Path
    allow_outside_root: bool
    label: str
    groups: tuple[str, ...]
    classes: list[str] | None
    id_column: str
    region_columns: list[tuple[str, str, str]]

    def check(self, row: int, rec: dict[str, str]) -> _Row:
        image_cell = rec["image"]
        if not image_cell:
            raise _RowError("image", "empty image path")
        image = self._resolve(image_cell, "image")
        width, height = _check_image(image, image_cell)
        label = rec[self.label]
        if not label:
            raise _RowError(self.label, "empty label")
        if self.classes is not None and label not in self.classes:
            raise _RowError(self.label, f"label {label!r} is not in classes {self.classes}")
        for g in self.groups:
            if not rec[g]:
                raise _RowError(g, "empty group attribute")
        sample_id = rec[self.id_column]
        if not sample_id:
            raise _RowError(self.id_column, "empty id")
        regions: list[tuple[str, str, Any]] = []
        for column, region, kind in self.region_columns:
            cell = rec[column]
            if not cell:
                continue  # absent region: allowed, its metrics are NaN
            if kind == "bbox":
                regions.append((region, kind, _parse_box(cell, column, width, height)))
            else:
                mask = self._resolve(cell, column)
                _check_mask(mask, cell, column)
                regions.append((region, kind, str(mask)))
        return _Row(
            row=row, id=sample_id, label=label, image=str(image), width=width, height=height,
            attrs=tuple(rec[g] for g in self.groups), regions=tuple(regions),
        )  # fmt: skip

    def _resolve(self, cell: str, column: str) -> Path:
        if any(not c.isprintable() for c in cell):
            raise _RowError(column, f"path {cell!r} contains control characters (e.g. NUL)")
        try:
            return self._resolve_path(cell, column)
        except (OSError, ValueError) as err:  # e.g. a name too long for the file system
            raise _RowError(column, f"path {cell!r} cannot be used: {err}") from err

    def _resolve_path(self, cell: str, column: str) -> Path:
        given = Path(cell)
        if given.is_absolute() and not self.allow_outside_root:
            raise _RowError(
                column, f"absolute path {cell!r} refused (allow_outside_root=True accepts it)"
            )
        # resolve() follows symlinks and '..', so a link pointing out is caught as well.
        full = (self.root / given).resolve()
        if not self.allow_outside_root and not full.is_relative_to(self.root):
            raise _RowError(column, f"path {cell!r} resolves outside the manifest's folder")
        if not full.exists():
            raise _RowError(column, f"file not found: {cell!r}")
        if not full.is_file():
            raise _RowError(column, f"not a file: {cell!r}")
        return full


def _open_checked(path: Path, cell: str, column: str, what: str) -> Image.Image:
    """Open, check the header (size against MAX_PIXELS), verify the structure (PNG CRCs), then
    decode every pixel: a truncated JPEG passes ``verify`` and fails only when decoded, which
    must happen here, not half-way through a run. Returns the decoded image (caller closes)."""
    try:
        with _open_image(path, column, cell) as im:
            im.verify()
        im = _open_image(path, column, cell)
        try:
            im.load()
        except BaseException:
            im.close()
            raise
        return im
    except _RowError:
        raise
    except Exception as err:
        raise _RowError(column, f"unreadable or corrupt {what} {cell!r}: {err}") from err


def _check_image(path: Path, cell: str) -> tuple[int, int]:
    with _open_checked(path, cell, "image", "image") as im:
        width, height = im.size
    if width < 1 or height < 1:
        raise _RowError("image", f"image {cell!r} has size {width}x{height}")
    return width, height


def _check_mask(path: Path, cell: str, column: str) -> None:
    with _open_checked(path, cell, column, "mask") as im:
        mode = im.mode
        if mode not in MASK_MODES:
            raise _RowError(
                column,
                f"mask {cell!r} is not a 2-D image (mode {mode}); save it single-channel "
                "(mode L, 1, P or I)",
            )
        arr = np.asarray(im)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise _RowError(column, f"mask {cell!r} has NaN or infinite values")


def _parse_box(cell: str, column: str, width: int, height: int) -> tuple[float, ...]:
    parts = cell.replace(",", " ").split()
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise _RowError(column, f"expected 'x0 y0 x1 y1', got {cell!r}")
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise _RowError(column, f"inverted or empty box {cell!r} (need x0 < x1 and y0 < y1)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise _RowError(column, f"box {cell!r} is outside the {width}x{height} image")
    return box
