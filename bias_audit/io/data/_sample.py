"""What a dataset yields (`Sample`) and what a DataLoader batches it into (`Batch`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bias_audit.errors import DataError

__all__ = ["Sample", "Batch", "collate"]


@dataclass(frozen=True)
class Sample:
    """One image of an :class:`~bias_audit.data.AuditDataset`, transformed.

    Attributes:
        image: (3, S, S) float32, normalised with the dataset's mean/std.
        label: index into the dataset's ``classes``.
        id: the sample id (the ``id`` column, or the ``image`` cell as written).
        index: position in the dataset.
        attrs: group attribute -> value, for the dataset's ``groups``.
        masks: region -> (S, S) bool, for every region of the dataset; all False when absent.
        present: region -> whether the row annotates that region (an absent region's metrics
            are NaN). A present region's mask can still be empty, e.g. when a centre crop cut
            its box away.
    """

    image: Tensor
    label: int
    id: str
    index: int
    attrs: dict[str, str] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)
    present: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """Samples stacked batch first.

    Attributes:
        images: (N, 3, S, S) float32.
        labels: (N,) long.
        ids: N sample ids.
        index: (N,) long, dataset positions.
        attrs: group attribute -> N values.
        regions: region names, in the order of ``masks``' and ``present``'s second axis.
        masks: (N, R, S, S) bool.
        present: (N, R) bool.
    """

    images: Tensor
    labels: Tensor
    ids: list[str]
    index: Tensor
    attrs: dict[str, list[str]]
    regions: tuple[str, ...]
    masks: Tensor
    present: Tensor

    def __len__(self) -> int:
        return len(self.ids)


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples into a :class:`Batch`; use as ``DataLoader(ds, collate_fn=collate)``.

    Regions are sorted by name, the order of ``AuditDataset.regions``. With no regions,
    ``masks`` is (N, 0, S, S) and ``present`` (N, 0).
    """
    if not samples:
        raise DataError("collate: got no samples")
    first = samples[0]
    regions = tuple(sorted(first.masks))
    attr_names = tuple(first.attrs)
    size = tuple(first.image.shape[-2:])
    for s in samples[1:]:
        if tuple(sorted(s.masks)) != regions or tuple(s.attrs) != attr_names:
            raise DataError(
                f"collate: sample {s.id!r} has regions {sorted(s.masks)} and attributes "
                f"{list(s.attrs)}, sample {first.id!r} has {list(regions)} and {list(attr_names)}"
            )
    n = len(samples)
    if regions:
        masks = torch.stack([torch.stack([s.masks[r] for r in regions]) for s in samples])
    else:
        masks = torch.zeros((n, 0, *size), dtype=torch.bool)
    present = torch.tensor([[s.present[r] for r in regions] for s in samples], dtype=torch.bool)
    return Batch(
        images=torch.stack([s.image for s in samples]),
        labels=torch.tensor([s.label for s in samples], dtype=torch.long),
        ids=[s.id for s in samples],
        index=torch.tensor([s.index for s in samples], dtype=torch.long),
        attrs={a: [s.attrs[a] for s in samples] for a in attr_names},
        regions=regions,
        masks=masks,
        present=present.reshape(n, len(regions)),
    )
