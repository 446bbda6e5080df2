"""The audit's plan: what each model needs (checkpoint, architecture, transform, target layer)
before any image streams."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bias_audit.core.config import IMAGE_SIZE_RANGE, AuditConfig, ModelConfig
from bias_audit.core.maps import resolve_target_layer
from bias_audit.errors import ConfigError
from bias_audit.io.checkpoints import checkpoint_arch, load_model, read_metadata
from bias_audit.io.data import IMAGENET_MEAN, IMAGENET_STD, load_manifest
from bias_audit.pipelines._step import StepSpec

#: Resizing the images by more than this factor (up or down) is a warning.
RESIZE_WARNING = 1.5


@dataclass(frozen=True)
class _Plan:
    """A model as it will be run: its config plus what its checkpoint says."""

    cfg: ModelConfig
    arch: str | None
    classes: tuple[str, ...] | None
    # None until the images are opened: then their own size, when they all share one
    image_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sha256: str
    target_layer: str | None = None
    # where target_layer came from: "config", "checkpoint" (the layer training penalised) or
    # "automatic" (explain's resolver picks it on the first batch)
    target_layer_from: str = "automatic"
    # where image_size came from: "model", "data", "checkpoint" or "images"
    image_size_from: str = "images"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _plan(config: AuditConfig, m: ModelConfig) -> _Plan:

    meta = read_metadata(m.checkpoint)
    classes = m.classes or (meta.classes if meta else None) or config.data.classes
    layer, layer_from = m.target_layer or config.explain.target_layer, "config"
    if layer is None and meta is not None and meta.target_layer is not None:
        layer, layer_from = meta.target_layer, "checkpoint"
    size, size_from = None, "images"
    for value, origin in (
        (m.image_size, "model"),
        (config.data.image_size, "data"),
        (meta.image_size if meta else None, "checkpoint"),
    ):
        if value is not None:
            size, size_from = int(value), origin
            break
    return _Plan(
        cfg=m,
        arch=m.arch
        or (
            checkpoint_arch(meta, where=f"models.{m.name}.checkpoint {str(m.checkpoint)!r}")
            if meta
            else None
        ),
        classes=tuple(classes) if classes else None,
        image_size=size,
        image_size_from=size_from,
        mean=tuple(meta.mean) if meta else tuple(IMAGENET_MEAN),
        std=tuple(meta.std) if meta else tuple(IMAGENET_STD),
        sha256=_sha256(m.checkpoint),
        target_layer=layer,
        target_layer_from=layer_from if layer is not None else "automatic",
    )


class _Datasets:
    """One dataset per distinct transform; models that share a transform share a dataset."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self._cache: dict[tuple, Any] = {}

    def get(self, plan: _Plan):

        d = self.config.data
        size = plan.image_size
        assert size is not None, "_settle_sizes gives every plan a size before its dataset opens"
        key = (plan.classes, size, plan.mean, plan.std)
        if key not in self._cache:
            self._cache[key] = load_manifest(
                d.manifest, label=d.label, groups=d.groups, classes=plan.classes,
                image_size=size, resize=d.resize, mean=plan.mean, std=plan.std,
                on_error=d.on_error, min_group_size=self.config.stats.min_group_size,
            )  # fmt: skip
        return self._cache[key]


def _native_sizes(ds) -> list[tuple[int, int]]:
    """(width, height) of every usable image, as the manifest read them (no decoding)."""
    return [(r.width, r.height) for r in ds._rows]


def _settle_sizes(
    config: AuditConfig, plans: list[_Plan], datasets: _Datasets
) -> tuple[list[_Plan], list[dict]]:
    """Give every plan an image size and say what resizing it costs: ``(plans, warnings)``.

    A plan without one (no size in the config or the checkpoint) takes the images' own size
    when they all share it; otherwise the run stops and asks, since a silent resize once made a
    shortcut look "low". A resize by more than 1.5x either way is a warning. The first plan's
    dataset is opened here (and kept in ``datasets``) when its size is known.
    """
    first = plans[0]
    probe = (
        datasets.get(first)
        if first.image_size is not None
        else datasets.get(replace(first, image_size=IMAGE_SIZE_RANGE[0]))
    )
    sizes = _native_sizes(probe)
    shared = sizes[0] if sizes and all(s == sizes[0] for s in sizes) else None
    out, warnings = [], []
    for p in plans:
        size = p.image_size
        if size is None:
            if shared is None:
                seen = sorted(set(sizes))[:3]
                raise ConfigError(
                    f"{config.source}: [data] image_size: not set, the checkpoint of model "
                    f"{p.cfg.name!r} records none and the images differ in size (e.g. "
                    f"{', '.join(f'{w}x{h}' for w, h in seen)}); set the side the model expects"
                )
            size = min(shared)
            p = replace(p, image_size=size)
        out.append(p)
        if sizes:
            short = sorted(min(s) for s in sizes)[len(sizes) // 2]
            factor = max(size / short, short / size)
            if factor > RESIZE_WARNING:
                warnings.append({
                    "code": "resized",
                    "text": (f"{p.cfg.name}: images of {short} px (median short side) were "
                             f"resized to {p.image_size} px ({factor:.1f}x, image_size from the "
                             f"{p.image_size_from}); a model may see them very differently "
                             "from its training images"),
                })  # fmt: skip
    return out, warnings


def _check_regions(config: AuditConfig, regions: Sequence[str]) -> None:
    for role in ("causal", "confounder"):
        for name in getattr(config.regions, role):
            if name not in regions:
                raise ConfigError(
                    f"{config.source}: [regions] {role}: region {name!r} is not in the "
                    f"manifest {config.data.manifest.name} (its regions: {list(regions)})"
                )
    unknown = [name for name in config.interventions.regions if name not in regions]
    if unknown:
        raise ConfigError(
            f"{config.source}: [interventions] regions: {unknown} not in the manifest "
            f"{config.data.manifest.name} (its regions: {list(regions)})"
        )


def _batches(n: int, size: int) -> list[list[int]]:
    return [list(range(s, min(s + size, n))) for s in range(0, n, size)]


def _load(plan: _Plan, ds, dev: torch.device) -> torch.nn.Module:
    return load_model(
        plan.arch, checkpoint=plan.cfg.checkpoint, classes=plan.classes or tuple(ds.classes),
        device=dev,
    )  # fmt: skip


def _spec(config: AuditConfig, plan: _Plan, ds) -> StepSpec:
    return StepSpec(
        model=plan.cfg.name,
        classes=tuple(ds.classes),
        # Every method is measured over the whole dataset; the gradient-based ones share the
        # one pass.
        methods=config.explain.methods,
        target=config.explain.target,
        target_layer=plan.target_layer,
        roles={"causal": config.regions.causal, "confounder": config.regions.confounder},
        groups=config.data.groups,
        interventions=config.interventions.enabled,
        fill=config.interventions.fill,
        baseline=config.interventions.baseline,
        occlude_regions=config.interventions.regions,
        seed=config.stats.seed,
        # discovery's inputs come from this pass (no second pass over the data)
        discovery_size=config.discovery.map_size if config.discovery.enabled else 0,
        discovery_features=config.discovery.features,
    )


def _first_images(ds, dev: torch.device, n: int = 1) -> torch.Tensor:
    return torch.stack([ds[i].image for i in range(min(n, len(ds)))]).to(dev)


def _final_layer(model: torch.nn.Module, ds, dev: torch.device) -> str:
    """The last spatial layer of ``model`` (explain's automatic choice), for the warning when
    the maps are taken elsewhere."""
    return resolve_target_layer(model, None, _first_images(ds, dev), None)[0]


#: Methods that run extra forward passes per image and channel (cost stated before the run).
PER_CHANNEL = ("scorecam",)


def _check_budget(model, ds, spec: StepSpec, config: AuditConfig, dev, progress: bool) -> None:
    """State the cost of the per-channel methods up front and refuse one over the budget.

    Score-CAM runs one forward pass per image and channel of the target layer (N x channels);
    the time of one is measured on a batch of the first images."""
    slow = [m for m in spec.methods if m in PER_CHANNEL]
    if not slow:
        return
    images = _first_images(ds, dev, n=min(8, len(ds)))
    with torch.no_grad():
        grid: dict[str, object] = {}
        layer = resolve_target_layer(model, spec.target_layer, images[:1], None)[1]
        handle = layer.register_forward_hook(lambda _m, _i, out: grid.setdefault("out", out))
        try:
            model(images[:1])
        finally:
            handle.remove()
        captured = grid.get("out")
        channels = int(captured.shape[1]) if isinstance(captured, torch.Tensor) else 0
        t0 = time.perf_counter()
        model(images)
        per_image = (time.perf_counter() - t0) / len(images)
    passes = len(ds) * channels
    seconds = passes * per_image
    text = (
        f"{spec.model}: {', '.join(slow)} needs {len(ds)} images x {channels} channels = "
        f"{passes} forward passes, about {seconds:.0f} s here"
    )
    budget = config.explain.max_seconds
    if budget > 0 and seconds > budget:
        raise ConfigError(
            f"{config.source}: [explain] max_seconds: {text}, over the budget of {budget:g} s; "
            "raise max_seconds or drop the method"
        )
    if progress:
        print(text, file=sys.stderr)
