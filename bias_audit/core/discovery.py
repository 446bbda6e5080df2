"""Clever-Hans discovery without annotations: cluster a class's maps, score each cluster.

SpRAy (Lapuschkin et al., Nat. Commun. 2019) clusters the heatmaps of one class spectrally and
leaves the judgement to a person. Here each cluster also gets numbers an auditor can check:
its size and accuracy, how much a group attribute's value is over-represented in it, how
consistently its members look at the cluster's common hot region, and an intervention score
(occluding that region flips the prediction in the members, but neither a random region of the
same area in the members nor the same region in the rest of the class does).

Pure: downsampled maps, features, predictions and attributes in, typed results out. The
pipeline (``bias_audit.pipelines._discovery``) collects the inputs and runs the occlusions.

A cluster is flagged as a candidate shortcut when all four hold (defaults in
:class:`bias_audit.core.config.DiscoveryConfig`):

- **big enough**: at least ``min_cluster_size`` members;
- **tight**: the class's eigengap (the jump in the normalised Laplacian's spectrum that chose
  the number of clusters) is at least ``min_eigengap``; a class whose maps form a continuum
  has a small gap, and its clusters are arbitrary cuts;
- **spatially consistent**: at least ``min_consistency`` of the members' maps peak inside the
  hot region (the smallest set of cells holding ``hot_mass`` of the cluster's mean map);
- **causal**: the flip excess (see :func:`flip_excess`), members' flip rate minus the
  strongest control (a random region in the members; the same region, and each image's own
  hottest cells, in the rest of the class or, for a whole-class cluster, the other classes),
  is at least ``min_flip_excess``.

The occluded region is the hot region grown by half a cell of the explained layer
(:func:`grow_region`); consistency is measured on the hot region itself. Before scoring, map
clusters of one class whose hot regions overlap (IoU >= ``merge_iou``) are
merged (:func:`merge_by_region`). A class that holds one group value ``min_enrichment`` times as
often as all images, none of whose clusters is flagged, is scored once more as one whole-class
cluster (the pipeline does it): a shortcut deciding the whole class is what every cut of it
needs, so each cut's rest-of-class controls flip as well.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import eigsh
from threadpoolctl import ThreadpoolController
from torch import Tensor

from bias_audit.errors import DataError

__all__ = [
    "Clustering",
    "Enrichment",
    "FlagRule",
    "downsample_maps",
    "spectral_clusters",
    "kmeans",
    "hot_region",
    "grow_region",
    "merge_by_region",
    "top_cells",
    "attribute_enrichment",
    "consistency",
    "flip_excess",
    "flag_cluster",
]

#: Above this many points the Laplacian's smallest eigenvalues come from a sparse solver.
_DENSE_MAX = 2000


@dataclass(frozen=True, kw_only=True)
class Clustering:
    """Spectral clusters of one class.

    Attributes:
        labels: (N,) int cluster index per point, 0 .. n_clusters - 1, numbered by size
            (0 is the largest; ties by first member).
        n_clusters: chosen by the eigengap (1 when there are too few points).
        eigenvalues: the smallest ``max_clusters + 1`` eigenvalues of the normalised
            Laplacian, ascending.
        eigengap: ``eigenvalues[k] - eigenvalues[k - 1]`` for the chosen k (NaN when k = 1
            was forced by too few points).
    """

    labels: np.ndarray
    n_clusters: int
    eigenvalues: np.ndarray = field(default_factory=lambda: np.zeros(0))
    eigengap: float = math.nan


@dataclass(frozen=True, kw_only=True)
class Enrichment:
    """The most over-represented value of one group attribute in a cluster.

    ``share`` is its share of the cluster's members, ``class_share`` its share of the
    population the cluster is compared with (its class; the pipeline uses all images when the
    cluster is the whole class), ``ratio`` = share / class_share (1: no enrichment), ``count``
    its members in the cluster, ``class_count`` its images in that population (so
    count / class_count is the share of them the cluster holds).
    """

    attribute: str
    value: str
    share: float
    class_share: float
    ratio: float
    count: int
    class_count: int


@dataclass(frozen=True, kw_only=True)
class FlagRule:
    """Thresholds of :func:`flag_cluster` (see the module docstring); their defaults live in
    one place, ``[discovery]`` of the audit config."""

    min_cluster_size: int
    min_eigengap: float
    min_consistency: float
    min_flip_excess: float
    min_enrichment: float = 1.5


def downsample_maps(maps: Tensor, *, size: int = 16) -> tuple[Tensor, Tensor]:
    """Area-average maps to ``size`` x ``size`` and normalise each to sum 1.

    Args:
        maps: (N, H, W) non-negative maps (H, W >= 1).
        size: the side of the output grid.

    Returns:
        ``(small, ok)``: (N, size, size) float32, each summing to 1 where ``ok``, zeros
        elsewhere; ``ok`` (N,) bool is False for all-zero or non-finite maps.
    """
    if not isinstance(maps, Tensor) or maps.ndim != 3:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise DataError(f"maps: expected a tensor (N, H, W), got {shape}")
    small = F.adaptive_avg_pool2d(maps.detach().float()[:, None], size)[:, 0].clamp_min(0)
    total = small.flatten(1).sum(dim=1)
    ok = torch.isfinite(total) & (total > 0)
    small = torch.where(ok[:, None, None], small / total.clamp_min(1e-30)[:, None, None], 0.0)
    return small, ok


def spectral_clusters(
    x: np.ndarray, *, max_clusters: int = 8, n_neighbors: int = 10, seed: int = 0
) -> Clustering:
    """Spectral clustering with the number of clusters chosen by the eigengap, as SpRAy does.

    The affinity is the symmetrised k-nearest-neighbour graph of the rows of ``x``
    (Euclidean); the embedding is the ``k`` eigenvectors of the normalised Laplacian
    ``I - D^-1/2 A D^-1/2`` with the smallest eigenvalues, rows normalised (Ng, Jordan and
    Weiss 2001), clustered by k-means. ``k`` in 1 .. ``max_clusters`` maximises
    ``lambda_k - lambda_{k-1}``.

    Args:
        x: (N, D) float points (e.g. flattened 16x16 maps, or features).
        max_clusters: the largest k considered.
        n_neighbors: neighbours per point in the affinity graph.
        seed: k-means' seed; the same seed gives the same labels.

    Returns:
        A :class:`Clustering`; with fewer than ``2 * n_neighbors`` points, one cluster.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < max(2 * n_neighbors, 4) or max_clusters < 2:
        return Clustering(labels=np.zeros(n, dtype=int), n_clusters=1)
    # One BLAS/OpenMP thread: a class's problem is small, and the thread pools' start-up and
    # spinning cost twice the work on an idle 2-core machine and 50x on a busy one, for the
    # same labels (benchmarks/clustering_bench.py).
    with _threads().limit(limits=1):
        return _spectral(x, max_clusters=max_clusters, n_neighbors=n_neighbors, seed=seed)


@functools.cache
def _threads() -> ThreadpoolController:
    # Made once: each threadpool_limits() call would inspect the loaded libraries again.
    return ThreadpoolController()


def _spectral(x: np.ndarray, *, max_clusters: int, n_neighbors: int, seed: int) -> Clustering:
    n = len(x)
    knn = _knn_graph(x, n_neighbors)
    a = ((knn + knn.T) * 0.5).tocsr()
    deg = np.asarray(a.sum(axis=1)).ravel()
    inv = sp.diags(1.0 / np.sqrt(np.maximum(deg, 1e-12)))
    lap = sp.identity(n) - inv @ a @ inv
    m = min(max_clusters + 1, n - 1)
    if n <= _DENSE_MAX:
        # only the m smallest eigenpairs: a few times faster than the full decomposition
        # float32: a third faster, and the eigengap is read to two decimals
        vals, vecs = scipy.linalg.eigh(lap.toarray().astype(np.float32), subset_by_index=[0, m - 1])
        vals, vecs = vals.astype(np.float64), vecs.astype(np.float64)
    else:
        # Shift-invert around a point just below 0 finds the smallest eigenvalues quickly.
        v0 = np.random.default_rng(seed).standard_normal(n)
        vals, vecs = eigsh(lap.tocsc(), k=m, sigma=-1e-3, which="LM", v0=v0)
        order = np.argsort(vals)
        vals, vecs = vals[order], vecs[:, order]
    vals = np.clip(vals, 0.0, None)
    gaps = np.diff(vals)  # gaps[k - 1] = lambda_k - lambda_{k-1}
    k = int(np.argmax(gaps)) + 1
    emb = vecs[:, :k]
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    if k == 1:
        labels = np.zeros(n, dtype=int)
    else:
        labels = kmeans(emb, k, seed=seed)
    return Clustering(
        labels=_by_size(labels), n_clusters=k, eigenvalues=vals, eigengap=float(gaps[k - 1])
    )


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, restarts: int = 4,
           max_iter: int = 300) -> np.ndarray:  # fmt: skip
    """Lloyd's k-means with k-means++ seeding: (N,) labels of the best of ``restarts`` runs.

    The spectral embedding is small (a class's images x at most ``max_clusters`` columns), so
    plain numpy costs well under a millisecond, where scikit-learn's KMeans pays its thread
    pools' set-up on every fit (a first fit in a process about 15 ms). Four restarts: the rows
    lie on the unit sphere near k well-spread points when the eigengap is clear. Deterministic
    for a seed; the best run has the lowest inertia (ties: the first).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    rng = np.random.default_rng(seed)
    sq = np.einsum("ij,ij->i", x, x)
    best, best_inertia = np.zeros(n, dtype=int), math.inf
    for _ in range(restarts):
        # k-means++ (Arthur and Vassilvitskii 2007): each next centre drawn in proportion to
        # the squared distance to the nearest centre so far
        centres = [x[rng.integers(n)]]
        near = ((x - centres[0]) ** 2).sum(axis=1)
        for _ in range(1, k):
            total = near.sum()
            pick = rng.integers(n) if total <= 0 else rng.choice(n, p=near / total)
            centres.append(x[pick])
            near = np.minimum(near, ((x - x[pick]) ** 2).sum(axis=1))
        c = np.stack(centres)
        labels = np.full(n, -1)
        for _ in range(max_iter):
            d = sq[:, None] - 2.0 * x @ c.T + np.einsum("ij,ij->i", c, c)[None, :]
            new = np.argmin(d, axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = labels == j
                # an emptied cluster keeps its centre (it may win points back)
                if members.any():
                    c[j] = x[members].mean(axis=0)
        d = sq[:, None] - 2.0 * x @ c.T + np.einsum("ij,ij->i", c, c)[None, :]
        inertia = float(np.maximum(d[np.arange(n), labels], 0).sum())
        if inertia < best_inertia:
            best, best_inertia = labels.copy(), inertia
    return best


def _knn_graph(x: np.ndarray, k: int) -> sp.csr_matrix:
    """(N, N) 0/1 graph: each row's ``k`` nearest other rows (Euclidean).

    Squared distances from one float32 matrix product and a partial sort: the same graph as
    scikit-learn's ``kneighbors_graph`` up to ties, in 0.4 of its time on a class of 500.
    Equal distances are broken by ``argpartition``, deterministically for the same input.
    """
    n = len(x)
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x32, x32)
    d = sq[:, None] + sq[None, :] - 2.0 * (x32 @ x32.T)
    np.fill_diagonal(d, np.inf)
    idx = np.argpartition(d, k, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), k)
    return sp.csr_matrix((np.ones(n * k), (rows, idx.ravel())), shape=(n, n))


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters so 0 is the largest (ties: the one whose first member comes first)."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-counts[i], first[i]))
    remap = {int(ids[j]): rank for rank, j in enumerate(order)}
    return np.array([remap[int(v)] for v in labels], dtype=int)


def hot_region(mean_map: Tensor, *, mass: float = 0.5, min_area: float = 0.05) -> Tensor:
    """The smallest set of cells holding ``mass`` of a map, and at least ``min_area`` of it.

    Args:
        mean_map: (h, w) non-negative map (need not be normalised).
        mass: share of the map's total the region must hold.
        min_area: the region's least share of the cells, so a single hot cell still gives an
            occlusion large enough to matter.

    Returns:
        (h, w) bool; all False for an all-zero map.
    """
    flat = mean_map.detach().float().flatten()
    total = float(flat.sum())
    if not math.isfinite(total) or total <= 0:
        return torch.zeros_like(mean_map, dtype=torch.bool)
    # A stable sort by descending value: ties are broken by position, deterministically.
    order = torch.sort(flat, descending=True, stable=True).indices
    cum = torch.cumsum(flat[order], 0) / total
    need = int(torch.searchsorted(cum, torch.tensor(mass - 1e-9)).item()) + 1
    need = max(need, math.ceil(min_area * flat.numel()))
    out = torch.zeros(flat.numel(), dtype=torch.bool)
    out[order[: min(need, flat.numel())]] = True
    return out.view(mean_map.shape)


def grow_region(region: Tensor, *, cells: int) -> Tensor:
    """(h, w) bool: ``region`` grown by ``cells`` cells on every side (a square dilation).

    A class-activation map is computed at its layer's resolution and upsampled, so a place in
    it is known only to within one layer cell: the hottest cells of a low-resolution map can
    sit beside the thing they point at and cover only part of it (a watermark half occluded
    is still read). Growing the region by half a layer cell covers what the map points at.
    """
    if cells <= 0:
        return region
    grown = F.max_pool2d(region[None, None].float(), 2 * cells + 1, stride=1, padding=cells)
    return grown[0, 0].bool()


def consistency(small: Tensor, region: Tensor) -> float:
    """Share of the members whose own map peaks inside ``region``: (N, h, w), (h, w).

    Not the members' mean mass inside the region: that is the mean map's mass there, which
    the hot region holds by construction, whatever the members do. NaN for no members.
    """
    if len(small) == 0:
        return math.nan
    peak = small.flatten(1).argmax(dim=1)
    return float(region.flatten()[peak].float().mean())


def attribute_enrichment(
    members: np.ndarray, attrs: Mapping[str, Sequence[object]]
) -> tuple[Enrichment, ...]:
    """For each attribute, its value most over-represented among ``members``.

    Args:
        members: (N,) bool, the cluster within its class.
        attrs: attribute name -> N values over the class (missing values are skipped).

    Returns:
        One :class:`Enrichment` per attribute with a value in the cluster, in ``attrs`` order.
    """
    out: list[Enrichment] = []
    members = np.asarray(members, dtype=bool)
    for name, values in attrs.items():
        vals = np.asarray([None if _missing(v) else str(v) for v in values], dtype=object)
        known = np.array([v is not None for v in vals])
        in_c = members & known
        if not in_c.any():
            continue
        best: Enrichment | None = None
        for v in sorted({str(v) for v in vals[in_c]}):
            count = int((vals[in_c] == v).sum())
            class_count = int((vals[known] == v).sum())
            share = count / int(in_c.sum())
            class_share = class_count / int(known.sum())
            e = Enrichment(
                attribute=name,
                value=v,
                share=share,
                class_share=class_share,
                ratio=share / class_share,
                count=count,
                class_count=class_count,
            )
            if best is None or (e.ratio, e.count) > (best.ratio, best.count):
                best = e
        if best is not None:  # a value in the cluster always gives one
            out.append(best)
    return tuple(out)


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def flip_excess(flip: float, flip_random: float, flip_place: float, flip_own: float) -> float:
    """Members' flip rate minus the strongest of three controls (all flip rates):

    - ``flip_random``: a random region of the same area in the members;
    - ``flip_place``: the cluster's hot region in the rest of the class (in the other classes
      when the cluster is the whole class: a watermark on every image of a class leaves no
      rest, and a region every image needs, the centre say, still flips the other classes);
    - ``flip_own``: in those same images, each one's own hottest cells, as many as the hot
      region has. A cluster of a clean model that only groups where the object lies loses its
      evidence when occluded, but so does every other image when its own evidence is; a
      shortcut is read from one small region more decisively than the class's other evidence.

    NaN when ``flip`` or ``flip_random`` is NaN or neither place control was measured.
    """
    places = [v for v in (flip_place, flip_own) if not math.isnan(v)]
    if math.isnan(flip) or math.isnan(flip_random) or not places:
        return math.nan
    return flip - max(flip_random, *places)


def top_cells(small: Tensor, count: int) -> Tensor:
    """(N, h, w) bool: each map's ``count`` hottest cells (ties by position)."""
    flat = small.detach().float().flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :count]
    out = torch.zeros_like(flat, dtype=torch.bool)
    out.scatter_(1, order, True)
    return out.view(small.shape)


def merge_by_region(labels: np.ndarray, regions: Sequence[Tensor], *, iou: float) -> np.ndarray:
    """Merge clusters whose hot regions overlap by at least ``iou`` (intersection over union),
    transitively; renumber by size as :func:`spectral_clusters` does.

    The eigengap splits a class by whatever varies most in its maps; when the model looks at
    one place in all of them (a watermark) but the maps also vary elsewhere (the object's
    position), that split cuts one strategy into several. ``regions[k]`` is cluster k's.
    """
    parent = list(range(len(regions)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a in range(len(regions)):
        for b in range(a + 1, len(regions)):
            inter = float((regions[a] & regions[b]).sum())
            union = float((regions[a] | regions[b]).sum())
            if union > 0 and inter / union >= iou:
                parent[root(b)] = root(a)
    return _by_size(np.array([root(int(v)) for v in labels], dtype=int))


def flag_cluster(
    *,
    size: int,
    eigengap: float,
    consistency: float,
    excess: float,
    rule: FlagRule,
    whole_class: bool = False,
    enrichment: float | None = None,
) -> tuple[bool, tuple[str, ...]]:
    """Whether a cluster is a candidate shortcut, and why not (the failed conditions).

    A cluster that is its whole class is what any model that has learned the class looks
    like: one consistent place whose occlusion flips it. Without annotations nothing tells a
    coat from a watermark there, except the group attributes: when the audit has some
    (``enrichment``, the largest ratio of a value's share in the cluster to its share in all
    images), such a cluster is flagged only when a value is ``min_enrichment`` times as common
    in it. With no attribute (``enrichment`` None) it stays flagged, for a person to look at.
    """
    why = []
    if whole_class and enrichment is not None and not enrichment >= rule.min_enrichment:
        why.append(
            f"the whole class's strategy, no group value enriched (largest ratio "
            f"{enrichment:.2f} < {rule.min_enrichment})"
        )
    if size < rule.min_cluster_size:
        why.append(f"size {size} < {rule.min_cluster_size}")
    if not eigengap >= rule.min_eigengap:
        why.append(f"eigengap {eigengap:.3f} < {rule.min_eigengap}")
    if not consistency >= rule.min_consistency:
        why.append(f"consistency {consistency:.2f} < {rule.min_consistency}")
    if not excess >= rule.min_flip_excess:
        why.append(f"flip excess {excess:.2f} < {rule.min_flip_excess}")
    return not why, tuple(why)
