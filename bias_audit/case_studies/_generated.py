"""What every generated case-study data set shares: counts per split, one random stream per
image, PNG bytes, the manifest, and the stamp that makes a generation happen once.

A generator module supplies what differs (its splits' cells, how an image is drawn, its
manifest columns); the rules that decide whether a folder already holds the right data, and
how an image's randomness is derived, live here once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bias_audit.errors import ConfigError, DataError
from bias_audit.io._files import write_json, write_text

__all__ = [
    "check_generator_args",
    "generate_once",
    "png",
    "resolve_counts",
    "sample_rng",
    "shuffled",
    "write_manifest",
]


def check_generator_args(*, seed: object, image_size: object) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ConfigError(f"image_size: expected an int >= 32, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: expected an int >= 0, got {seed!r}")


def resolve_counts(
    n: int | Mapping[str, int] | None, defaults: Mapping[str, int], splits: Sequence[str]
) -> dict[str, int]:
    """Images per split: ``defaults`` for None, one int for every split, or a mapping that
    overrides some splits; every count an int >= 4."""
    counts = dict(defaults)
    if n is None:
        return counts
    if isinstance(n, int) and not isinstance(n, bool):
        counts = dict.fromkeys(splits, n)
    elif isinstance(n, Mapping):
        unknown = sorted(set(n) - set(splits))
        if unknown:
            raise ConfigError(f"n: unknown split {unknown[0]!r}; expected some of {tuple(splits)}")
        counts.update(n)
    else:
        raise ConfigError(f"n: expected None, an int or a mapping split -> int, got {n!r}")
    for split, k in counts.items():
        if not isinstance(k, int) or isinstance(k, bool) or k < 4:
            raise ConfigError(f"n[{split!r}]: expected an int >= 4, got {k!r}")
    return counts


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # compress_level 1: about 3x faster than the default for a few % more bytes
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One independent stream per image: an image depends only on (seed, split, index), never
    on how many images come before it or on the other splits' sizes."""
    split_key = int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, split_key, index]))


def shuffled(seed: int, split: str, n: int) -> np.ndarray:
    """The order in which a split's cells are drawn (a permutation of ``range(n)``)."""
    return np.random.default_rng(np.random.SeedSequence([seed, len(split), n])).permutation(n)


def write_manifest(folder: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> Path:
    """``folder/manifest.csv``, written last and atomically: its presence marks the split done
    (the images and masks before it are plain writes)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest = folder / "manifest.csv"
    write_text(manifest, buf.getvalue())
    return manifest


def generate_once(
    root: Path,
    params: Mapping[str, Any],
    splits: Sequence[str],
    write_split: Callable[[str], None],
    *,
    force: bool,
) -> dict[str, Path]:
    """Write every split with ``write_split`` unless ``root`` already holds them, generated
    with the same ``params`` (recorded in ``root/generator.json``).

    Raises:
        DataError: ``root`` holds a data set generated with other parameters, or an
            unreadable record, and ``force`` is False.
    """
    params = json.loads(json.dumps(dict(params)))  # tuples -> lists, as they come back from disk
    stamp = root / "generator.json"
    manifests = {split: root / split / "manifest.csv" for split in splits}
    if stamp.exists() and not force:
        try:
            previous = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"{stamp}: unreadable ({err}); pass force=True to regenerate") from err
        if previous == params and all(p.exists() for p in manifests.values()):
            return manifests
        if previous != params:
            changed = sorted(k for k in params if previous.get(k) != params[k])
            raise DataError(
                f"{root}: holds a data set generated with other parameters "
                f"({', '.join(changed)}); pass force=True to overwrite it"
            )
    # A stamp is only written once everything else is: its absence means "incomplete, redo".
    if stamp.exists():
        stamp.unlink()
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        write_split(split)
    write_json(stamp, params)
    return manifests
