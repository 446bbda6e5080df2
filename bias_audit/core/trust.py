"""Can the maps be trusted? Randomisation, layer and method sensitivity, faithfulness.

Pure: a model and a batch of images in, frozen results out. Every map comes from the one
engine, :func:`bias_audit.core.maps.explain`; every occlusion from
:func:`bias_audit.core.metrics.occlusion_effect`; every interval from
:func:`bias_audit.core.stats.bootstrap_ci`; every attention verdict from
:func:`bias_audit.core.findings.severity_of` (the thresholds of the confounder-attention
finding), so a trust check never disagrees with the audit about what a number means.

* Model-parameter randomisation (Adebayo et al. 2018): the model's parametrised modules are
  re-initialised cumulatively from the logits down (cascading, top-down) and, separately, from
  the input up (bottom-up, Hedström et al. 2023), on a deep copy. Each module is re-initialised
  with ``reset_parameters`` under its own fixed seed, as Quantus' MPRT does, so the fully
  randomised model is the same in both orders and in Quantus.
* Layer sensitivity: the causal and confounder mass of every method at the target layer and
  at the spatial layers before it, all from one forward and one backward pass.
* Faithfulness: deleting the top-k% most attended pixels against as many random pixels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import Tensor, nn

from bias_audit.core._naming import CAUSAL, CONFOUNDER
from bias_audit.core.findings import severity_of
from bias_audit.core.maps import Explanation, explain, explain_layers, resolve_target_layer
from bias_audit.core.metrics import attention_mass, occlusion_effect, role_masks
from bias_audit.core.stats import bootstrap_ci
from bias_audit.errors import ConfigError, DataError

__all__ = [
    "ORDERS",
    "Randomization",
    "LayerSensitivity",
    "Faithfulness",
    "TrustFinding",
    "spearman",
    "ssim",
    "explain_sample",
    "randomization_chunks",
    "randomize",
    "model_randomization",
    "preceding_layers",
    "layer_sensitivity",
    "faithfulness",
    "top_pixels",
    "random_pixels",
    "trust_findings",
]

#: Randomisation orders: cascading from the logits down, and from the input up.
ORDERS: tuple[str, ...] = ("top_down", "bottom_up")

#: Methods whose maps are signed input gradients (N, C, H, W): no mass, no top-k pixels.
_GUIDED = ("guided_backprop", "deconvnet", "guided_gradcam")

# Wang et al. (2004) and skimage's defaults: an 11-tap Gaussian window of sigma 1.5.
_SSIM_SIGMA = 1.5
_SSIM_WIN = 11
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


# -- similarity ------------------------------------------------------------------------------
def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps, ties ranked by their average.

    Args:
        a, b: (N, H, W) (or any (N, ...)) maps.

    Returns:
        (N,) float64 in [-1, 1]; NaN where either map is constant (no ranks to correlate).
    """
    if a.shape != b.shape:
        raise DataError(f"spearman: maps of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return _correlate(_centered_ranks(a), _centered_ranks(b))


def _centered_ranks(maps: Tensor) -> npt.NDArray[np.float64]:
    """Each map's pixel ranks (ties get their average rank, as scipy's ``rankdata``), minus
    their mean; torch's sort, which uses every thread, where scipy's uses one."""
    x = maps.detach().cpu().flatten(1)
    n, p = x.shape
    order = x.argsort(dim=1, stable=True)
    xs = x.gather(1, order)
    starts = torch.ones(n, p, dtype=torch.bool)
    starts[:, 1:] = xs[:, 1:] != xs[:, :-1]
    group = starts.cumsum(dim=1) - 1  # tie group of each sorted position
    position = torch.arange(1, p + 1, dtype=torch.float64).expand(n, p)
    total = torch.zeros(n, p, dtype=torch.float64).scatter_add_(1, group, position)
    count = torch.zeros(n, p, dtype=torch.float64).scatter_add_(1, group, torch.ones(n, p).double())
    average = (total / count.clamp(min=1)).gather(1, group)
    ranks = torch.empty(n, p, dtype=torch.float64).scatter_(1, order, average)
    centered: npt.NDArray[np.float64] = (ranks - (p + 1) / 2).numpy()
    return centered


def _correlate(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> Tensor:
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, (x * y).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)
    return torch.from_numpy(r)


def _unit(maps: Tensor) -> Tensor:
    """Each map min-max scaled to [0, 1]; a constant map becomes all zero."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values
    span = flat.max(dim=1).values - low
    out = (flat - low[:, None]) / torch.where(span > 0, span, 1.0)[:, None]
    return out.view_as(maps)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Mean structural similarity of each pair of maps, each first scaled to [0, 1].

    The Gaussian window (11 taps, sigma 1.5, data range 1, population covariances) is only
    placed where it fits inside the map, as skimage's ``structural_similarity`` with
    ``gaussian_weights=True, use_sample_covariance=False`` averages it.

    Args:
        a, b: (N, H, W) maps, H and W >= 11.

    Returns:
        (N,) float64, 1 for identical maps.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise DataError(
            f"ssim: expected two (N, H, W) maps, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if min(a.shape[-2:]) < _SSIM_WIN:
        raise DataError(f"ssim: maps of {tuple(a.shape[-2:])} px are smaller than the window")
    # float32, and the separable window as two banded matrix products: a direct 11 x 11 (or
    # even a separable) convolution of one-channel maps is slow on a CPU, a matmul is not.
    x = _unit(a.detach().float().cpu())
    y = _unit(b.detach().float().cpu())
    r = torch.arange(_SSIM_WIN, dtype=torch.float64) - _SSIM_WIN // 2
    g = torch.exp(-(r**2) / (2 * _SSIM_SIGMA**2))
    g = (g / g.sum()).float()

    def band(size: int) -> Tensor:
        # (size, size - WIN + 1): column i holds the window placed at rows i .. i + WIN - 1
        out = torch.zeros(size, size - _SSIM_WIN + 1)
        for k in range(_SSIM_WIN):
            out.diagonal(-k).copy_(g[k].expand(size - _SSIM_WIN + 1))
        return out

    rows, cols = band(x.shape[1]), band(x.shape[2])

    def blur(t: Tensor) -> Tensor:
        return rows.T @ t @ cols

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).double().mean(dim=1)


# -- randomisation ---------------------------------------------------------------------------
def _resettable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with ``reset_parameters``, in registration (for these models: forward) order."""
    return [(n, m) for n, m in model.named_modules() if n and hasattr(m, "reset_parameters")]


def randomization_chunks(model: nn.Module, steps: int) -> list[list[str]]:
    """The model's resettable modules cut into at most ``steps`` groups, input first.

    The last module (the logits) is a group of its own, so the first top-down step is the
    classic "randomise the logits"; the others are cut evenly. Bottom-up and top-down use the
    same groups, so both end on the same fully randomised model.
    """
    names = [n for n, _ in _resettable(model)]
    if not names:
        raise ConfigError("randomization: the model has no module with reset_parameters")
    if steps < 1:
        raise ConfigError(f"steps: expected an int >= 1, got {steps!r}")
    if steps == 1 or len(names) == 1:
        return [names]
    body, head = names[:-1], names[-1:]
    k = min(steps - 1, len(body))
    cuts = np.linspace(0, len(body), k + 1).round().astype(int)
    return [body[cuts[i] : cuts[i + 1]] for i in range(k)] + [head]


def randomize(model: nn.Module, modules: Sequence[str], *, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with the named modules re-initialised; ``model`` is untouched.

    Each module is reset under ``torch.manual_seed(seed + 1)`` (Quantus' MPRT convention),
    so its new weights depend on its shape and the seed only, not on the order. The global
    random state is restored afterwards.
    """
    twin = copy.deepcopy(model)
    _reset(twin, modules, seed)
    return twin


def _reset(model: nn.Module, modules: Sequence[str], seed: int) -> None:
    found = dict(model.named_modules())
    with torch.random.fork_rng(devices=[]):
        for name in modules:
            if name not in found or not hasattr(found[name], "reset_parameters"):
                raise ConfigError(f"randomize: the model has no resettable module {name!r}")
            torch.manual_seed(seed + 1)
            found[name].reset_parameters()


def _own_tensors(module: nn.Module) -> list[Tensor]:
    """The parameters and buffers a module holds itself (not its children's)."""
    return [*module.parameters(recurse=False), *module.buffers(recurse=False)]


class _Twin:
    """One working copy of a model whose modules switch between the original weights and one
    random draw's by copying tensors, instead of a deep copy and a reset for every step.

    A draw's weights are made once (every resettable module reset under the draw's seed, as
    :func:`randomize` does), so a step costs only the copy of the modules that change.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(model)
        self._random = copy.deepcopy(model)
        orig, twin, rand = (dict(m.named_modules()) for m in (model, self.model, self._random))
        self._tensors = {
            n: list(zip(_own_tensors(twin[n]), _own_tensors(orig[n]), _own_tensors(rand[n]),
                        strict=True))
            for n, _ in _resettable(model)
        }  # fmt: skip
        # per module: the draw whose weights it holds (None: the original's)
        self._holds: dict[str, int | None] = dict.fromkeys(self._tensors)
        self._draw = 0

    def draw(self, seed: int) -> None:
        """Make the random weights of draw ``seed``; the next :meth:`use` applies them."""
        _reset(self._random, list(self._tensors), seed)
        self._draw += 1

    @torch.no_grad()
    def use(self, randomised: Sequence[str]) -> nn.Module:
        """The working copy with exactly ``randomised`` holding the current draw's weights."""
        want = set(randomised)
        for name, groups in self._tensors.items():
            target = self._draw if name in want else None
            if self._holds[name] != target:
                for dst, original, random in groups:
                    dst.copy_(random if target is not None else original)
                self._holds[name] = target
        return self.model


@dataclass(frozen=True)
class Randomization:
    """Similarity of each method's maps before and after cumulative randomisation.

    Attributes:
        table: one row per order x step x method with columns ``order`` ("top_down" or
            "bottom_up"), ``step`` (1..S; S is the fully randomised model, shared by both
            orders), ``modules`` (the modules randomised so far, "first..last"),
            ``share`` (the share of resettable modules randomised), ``method``, ``draws``
            (independent random draws the sample was spread over), ``spearman`` (mean over
            images of the per-image Spearman), ``spearman_ci_low``, ``spearman_ci_high``,
            ``spearman_other_image`` (the same with each original map paired with another
            image's map from the same random draw: the similarity that layout alone gives; a
            ``spearman`` near it is positional, not the image's content), ``ssim`` (mean over
            images; NaN for images under 11 px), ``n_valid`` (images whose Spearman is
            defined: both maps not constant).
        per_image: (order, step, method) -> (N,) Spearman per image.
    """

    table: pd.DataFrame
    per_image: Mapping[tuple[str, int, str], Tensor]


def _map_methods(methods: Sequence[str]) -> tuple[str, ...]:
    return tuple(m for m in methods if m not in _GUIDED)


def explain_sample(
    model: nn.Module,
    images: Tensor,
    methods: tuple[str, ...],
    target_layer: str | None,
    targets: Tensor | None,
    batch_size: int,
) -> Explanation:
    """``explain`` in chunks of ``batch_size`` images, merged: in eval mode the images are
    independent, so the maps are the same; memory stays that of one chunk."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if len(images) <= batch_size:
        return explain(model, images, methods=methods, target_layer=target_layer, targets=targets)
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = slice(start, start + batch_size)
        t = targets[chunk] if targets is not None else None
        parts.append(explain(model, images[chunk], methods=methods, target_layer=target_layer,
                             targets=t))  # fmt: skip
        target_layer = parts[0].target_layer  # resolve an automatic layer once
    return Explanation(
        logits=torch.cat([p.logits for p in parts]),
        targets=torch.cat([p.targets for p in parts]),
        maps=MappingProxyType({m: torch.cat([p.maps[m] for p in parts]) for m in methods}),
        target_layer=parts[0].target_layer,
        layer_shape=parts[0].layer_shape,
    )


def _explain_layers_sample(
    model: nn.Module,
    images: Tensor,
    methods: tuple[str, ...],
    layers: Sequence[str],
    targets: Tensor | None,
    batch_size: int,
) -> dict[str, Explanation]:
    """``explain_layers`` in chunks of ``batch_size`` images, merged per layer."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    parts: list[dict[str, Explanation]] = []
    for start in range(0, len(images), batch_size):
        chunk = slice(start, start + batch_size)
        t = targets[chunk] if targets is not None else None
        parts.append(explain_layers(model, images[chunk], methods, layers=layers, targets=t))
    if len(parts) == 1:
        return parts[0]
    return {
        layer: Explanation(
            logits=torch.cat([p[layer].logits for p in parts]),
            targets=torch.cat([p[layer].targets for p in parts]),
            maps=MappingProxyType(
                {m: torch.cat([p[layer].maps[m] for p in parts]) for m in methods}
            ),
            target_layer=first.target_layer,
            layer_shape=first.layer_shape,
        )
        for layer, first in parts[0].items()
    }


def _explained(
    model: nn.Module,
    images: Tensor,
    methods: tuple[str, ...],
    target_layer: str | None,
    targets: Tensor | None,
    explained: Explanation | None,
    batch_size: int,
) -> Explanation:
    """The audited model's explanation of ``images``: ``explained`` when the caller already has
    it (the three checks share one pass), else a new pass."""
    if explained is None:
        return explain_sample(model, images, methods, target_layer, targets, batch_size)
    missing = [m for m in methods if m not in explained.maps]
    if missing or len(explained.targets) != len(images):
        raise ConfigError(
            f"explained: an explanation of {len(explained.targets)} images with methods "
            f"{sorted(explained.maps)} does not cover {len(images)} images and {list(methods)}"
        )
    if target_layer is not None and explained.target_layer != target_layer:
        raise ConfigError(
            f"explained: taken at {explained.target_layer!r}, not target_layer {target_layer!r}"
        )
    return explained


def _draw_parts(n: int, draws: int) -> list[Tensor]:
    """Image indices per random draw: image ``i`` is explained by draw ``i % draws``."""
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
        raise ConfigError(f"draws: expected an int >= 1, got {draws!r}")
    return [torch.arange(d, n, draws) for d in range(min(draws, n))]


def model_randomization(
    model: nn.Module,
    images: Tensor,
    *,
    methods: Sequence[str] = ("gradcam",),
    target_layer: str | None = None,
    targets: Tensor | None = None,
    steps: int = 2,
    seed: int = 0,
    n_boot: int = 1000,
    explained: Explanation | None = None,
    batch_size: int = 32,
    draws: int = 4,
) -> Randomization:
    """Adebayo's model-parameter randomisation test, cascading top-down and bottom-up.

    Cost: one explain pass of ``images`` for the original model (none when ``explained`` is
    given) and ``2 * S - 1`` for the randomised ones (the fully randomised model is shared by
    both orders), with S = the number of groups of :func:`randomization_chunks`, whatever
    ``draws`` is. Every map of a step comes from the same pass.

    The sample is spread over ``draws`` independent random draws: image ``i`` is explained by
    draw ``i % draws`` at every step (seeds ``seed``, ``seed + 1``, ...; draw 0 is Quantus
    MPRT's model, so with ``draws = 1`` the numbers are Quantus'). One random network is a
    sample of one: its maps carry a layout of their own (padding and stride artefacts, the
    same for every image), and whether that layout happens to match the original maps' moves
    every image's correlation together, which a bootstrap over images does not see. Spread
    over several draws, the mean over images is also a mean over networks, for no extra pass.
    ``spearman_other_image`` measures the layout's share: the Spearman of each original map
    with another image's map from the same draw.

    Args:
        model: the audited classifier; never modified (the steps work on a copy).
        images: (N, C, H, W), as the model takes them.
        methods: CAM-family methods (guided ones are skipped).
        target_layer: as for ``explain``.
        targets: (N,) class indices explained on every model (default: the original model's
            prediction), so a randomised model is asked about the same class.
        steps: the most groups of modules randomised one after another.
        seed: the seed of the re-initialisation and of the bootstrap.
        n_boot: bootstrap resamples of the Spearman interval.
        explained: the audited model's explanation of ``images`` (same methods, layer and
            targets) when the caller already has it; saves one pass.
        batch_size: images per explain pass; bounds the memory.
        draws: independent random draws the images are spread over (at most N are used).

    Returns:
        A :class:`Randomization`.
    """
    methods = _map_methods(methods)
    if not methods:
        raise ConfigError("methods: no CAM-family method to randomise")
    parts = _draw_parts(len(images), draws)
    original = _explained(model, images, methods, target_layer, targets, explained, batch_size)
    targets = original.targets
    layer = original.target_layer
    ranks = {m: _centered_ranks(original.maps[m]) for m in methods}
    # SSIM needs room for its window; below 11 px (possible: image_size >= 8) it is NaN.
    windowed = min(images.shape[-2:]) >= _SSIM_WIN
    chunks = randomization_chunks(model, steps)
    total = sum(len(c) for c in chunks)
    plan: list[tuple[str, int, list[str]]] = []
    for order in ORDERS:
        done: list[str] = []
        for step, chunk in enumerate(chunks[::-1] if order == "top_down" else chunks, start=1):
            done = done + chunk
            plan.append((order, step, done))
    last = len(chunks)

    def model_of(order: str, step: int) -> tuple[str, int]:
        # Both orders end on the same fully randomised model: top-down's last step.
        return (ORDERS[0], last) if step == last else (order, step)

    models = {model_of(order, step): done for order, step, done in plan}
    drawn = {
        key: {m: torch.full_like(original.maps[m], math.nan) for m in methods} for key in models
    }
    twin = _Twin(model)
    for d, idx in enumerate(parts):
        twin.draw(seed + d)
        on = idx.to(images.device)
        for key, done in models.items():
            exp = explain_sample(twin.use(done), images[on], methods, layer, targets[on],
                                 batch_size)  # fmt: skip
            for m in methods:
                drawn[key][m][on] = exp.maps[m]
    # each image's "other image": the next one explained by the same draw (none when alone)
    other = torch.empty(len(images), dtype=torch.long)
    other[torch.cat(parts)] = torch.cat([idx.roll(1) for idx in parts])
    alone = other == torch.arange(len(images))
    measured: dict[tuple[tuple[str, int], str], tuple[Tensor, dict[str, object]]] = {}
    for key in models:
        for m in methods:
            maps = drawn[key][m]
            rand = _centered_ranks(maps)
            rho = _correlate(ranks[m], rand)
            others = _correlate(ranks[m], rand[other.numpy()])
            others[alone] = math.nan
            lo, hi = bootstrap_ci(rho.numpy(), n_boot=n_boot, seed=seed)
            measured[(key, m)] = rho, {
                "spearman": _nanmean(rho), "spearman_ci_low": lo, "spearman_ci_high": hi,
                "spearman_other_image": _nanmean(others),
                "ssim": _nanmean(ssim(original.maps[m], maps)) if windowed else math.nan,
                "n_valid": int(torch.isfinite(rho).sum()),
            }  # fmt: skip
    rows: list[dict[str, object]] = []
    per_image: dict[tuple[str, int, str], Tensor] = {}
    for order, step, done in plan:
        span = f"{done[0]}..{done[-1]}" if len(done) > 1 else done[0]
        for m in methods:
            rho, values = measured[(model_of(order, step), m)]
            per_image[(order, step, m)] = rho
            rows.append({
                "order": order, "step": step, "modules": span,
                "share": len(done) / total, "method": m, "draws": len(parts), **values,
            })  # fmt: skip
    return Randomization(table=pd.DataFrame(rows), per_image=per_image)


def _nanmean(t: Tensor) -> float:
    v = t.double()
    ok = torch.isfinite(v)
    return float(v[ok].mean()) if bool(ok.any()) else math.nan


# -- layer and method sensitivity ------------------------------------------------------------
def preceding_layers(
    model: nn.Module, target_layer: str | None, images: Tensor, *, count: int = 2
) -> list[str]:
    """Up to ``count`` spatial layers before the target layer, nearest first.

    They are the target's earlier siblings (same parent module) of the same kind that give a
    (N, C, h, w) output: ``layer3`` and ``layer2`` before ResNet's ``layer4``, the earlier
    blocks' ReLUs before SmallCNN's last one. Found with one forward pass of one image.
    """
    name, layer, _ = resolve_target_layer(model, target_layer, images, None)
    while True:
        parent_name = name.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else model
        siblings = list(parent.named_children())
        here = [m for _, m in siblings].index(layer)
        before = [
            (f"{parent_name}.{n}" if parent_name else n, m)
            for n, m in siblings[:here]
            if type(m) is type(layer)
        ]
        children = list(layer.named_children())
        if before or not children:
            break
        # A container's output is its last child's: look among the children (SmallCNN's
        # ``features`` -> its last ReLU, whose earlier siblings end the earlier blocks).
        name, layer = f"{name}.{children[-1][0]}", children[-1][1]
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(module: nn.Module, _args: object, out: object) -> None:
        if isinstance(out, Tensor):
            shapes[module] = tuple(out.shape)

    handles = [m.register_forward_hook(record) for _, m in before]
    training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(images[:1])
    finally:
        for h in handles:
            h.remove()
        for m, flag in training:
            m.training = flag
    spatial = [n for n, m in before if len(shapes.get(m, ())) == 4 and _area(shapes[m]) > 1]
    return spatial[::-1][:count]


def _area(shape: tuple[int, ...]) -> int:
    return shape[-1] * shape[-2]


@dataclass(frozen=True)
class LayerSensitivity:
    """Causal and confounder attention of every method at several layers.

    Attributes:
        table: one row per layer x method x role with columns ``layer``, ``is_target``
            (the audited layer), ``layer_shape`` ("h x w"), ``method``, ``role``, ``mass``
            (mean share of the map inside the role), ``ci_low``, ``ci_high`` (bootstrap),
            ``area`` (mean share of the image), ``lift`` (mass / area), ``n`` (images with the
            role present and a valid map), ``verdict`` (severity of the
            confounder-attention finding these numbers would give, or "none"; for the causal
            role always "").
        explained: the target layer's explanation from the multi-layer pass (the same maps as
            ``explain`` to float rounding), for the other checks to reuse instead of a pass of
            their own.
    """

    table: pd.DataFrame
    explained: Explanation | None = None


def _role_rows(
    maps: Tensor, masks: Tensor, present: Tensor, regions: Sequence[str],
    roles: Mapping[str, Sequence[str]], seed: int, n_boot: int,
) -> list[dict[str, object]]:  # fmt: skip
    by_name, here = role_masks(masks, present, regions, roles)
    ok = torch.isfinite(maps.flatten(1).sum(1)) & (maps.flatten(1).sum(1) > 0)
    rows = []
    for role in (CONFOUNDER, CAUSAL):
        if not roles.get(role):
            continue
        keep = here[role] & ok
        if bool(keep.any()):
            mass = attention_mass(maps[keep], by_name[role][keep]).double().numpy()
            area = by_name[role][keep].flatten(1).double().mean(1).numpy()
        else:  # no image with the role and a valid map: every number is NaN
            mass = area = np.zeros(0)
        m = float(np.nanmean(mass)) if np.isfinite(mass).any() else math.nan
        a = float(np.mean(area)) if len(area) else math.nan
        lo, hi = bootstrap_ci(mass, n_boot=n_boot, seed=seed)
        lift = m / a if a > 0 else math.nan
        verdict = ""
        if role == CONFOUNDER:
            verdict = _verdict(m, lift)
        rows.append({
            "role": role, "mass": m, "ci_low": lo, "ci_high": hi, "area": a, "lift": lift,
            "n": int(np.isfinite(mass).sum()), "verdict": verdict,
        })  # fmt: skip
    return rows


def _disagreement(verdicts: Sequence[str]) -> str:
    """medium when one verdict reports a finding and another none; low for severities only."""
    return "medium" if "none" in verdicts and len(set(verdicts)) > 1 else "low"


def _verdict(mass: float, lift: float) -> str:
    """The severity the confounder-attention finding gives these numbers, "none" below it."""
    if not (math.isfinite(mass) and math.isfinite(lift)):
        return "none"
    found = [severity_of("confounder_mass", mass), severity_of("confounder_lift", lift)]
    ranked = [s for s in ("high", "medium", "low") if s in found]
    return ranked[0] if ranked else "none"


def layer_sensitivity(
    model: nn.Module,
    images: Tensor,
    masks: Tensor,
    present: Tensor,
    regions: Sequence[str],
    roles: Mapping[str, Sequence[str]],
    *,
    methods: Sequence[str] = ("gradcam",),
    target_layer: str | None = None,
    layers: Sequence[str] | None = None,
    count: int = 2,
    targets: Tensor | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    explained: Explanation | None = None,
    batch_size: int = 32,
) -> LayerSensitivity:
    """Attention per role of every method at the target layer and the layers before it.

    Every layer's maps come from the same forward pass and one backward pass
    (:func:`bias_audit.core.maps.explain_layers`, per chunk of ``batch_size`` images), on the
    same images and targets.

    Args:
        model: the classifier (not modified).
        images: (N, C, H, W). masks: (N, R, H, W) bool. present: (N, R) bool.
        regions: the R region names. roles: "causal"/"confounder" -> region names.
        methods: CAM-family methods (guided ones are skipped).
        target_layer: the audited layer (None: explain's automatic choice).
        layers: the other layers; None picks ``count`` of :func:`preceding_layers`.
        targets: (N,) class indices (default: the predicted class).
        seed, n_boot: the bootstrap's seed and resamples.
        explained, batch_size: as for :func:`model_randomization`.
    """
    methods = _map_methods(methods)
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise DataError(
            f"masks: shape {tuple(masks.shape)} does not fit images {tuple(images.shape)}"
        )
    known = dict(model.named_modules())
    unknown = [x for x in layers or () if x not in known or not x]
    if unknown:
        raise ConfigError(f"layers: the model has no layer named {unknown[0]!r}")
    if explained is not None:
        # Only the layer and the targets are taken from it: every layer's maps come from the
        # one multi-layer pass below (the target layer's are the same to float rounding).
        _explained(model, images, methods, target_layer, targets, explained, batch_size)
        name, targets = explained.target_layer, explained.targets
    else:
        name = resolve_target_layer(model, target_layer, images[:1], None)[0]
    others = (
        list(layers) if layers is not None else preceding_layers(model, name, images, count=count)
    )
    order = [name, *[x for x in others if x != name]]
    by_layer = _explain_layers_sample(model, images, methods, order, targets, batch_size)
    rows = []
    for layer in order:
        exp = by_layer[layer]
        shape = f"{exp.layer_shape[0]}x{exp.layer_shape[1]}"
        for m in methods:
            maps = exp.maps[m].cpu()
            for r in _role_rows(maps, masks.cpu(), present.cpu(), regions, roles, seed, n_boot):
                rows.append({"layer": layer, "is_target": layer == name,
                             "layer_shape": shape, "method": m, **r})  # fmt: skip
    return LayerSensitivity(table=pd.DataFrame(rows), explained=by_layer[name])


# -- faithfulness ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Faithfulness:
    """Drop of the target probability when the most attended pixels are deleted.

    Attributes:
        table: one row per method x fraction with columns ``method``, ``fraction`` (share of
            the pixels deleted), ``drop_top`` (mean drop of the target probability when the
            map's top pixels are filled), ``drop_random`` (the same number of random pixels),
            ``excess`` (mean of the paired difference), ``excess_ci_low``,
            ``excess_ci_high`` (bootstrap), ``n`` (images with a valid map).
    """

    table: pd.DataFrame


def top_pixels(maps: Tensor, fraction: float) -> Tensor:
    """(N, H, W) bool: each map's ``round(fraction * H * W)`` highest pixels (at least one)."""
    n, h, w = maps.shape
    k = max(1, round(fraction * h * w))
    idx = maps.flatten(1).topk(k, dim=1).indices
    out = torch.zeros(n, h * w, dtype=torch.bool, device=maps.device)
    out.scatter_(1, idx, True)
    return out.view(n, h, w)


def random_pixels(n: int, h: int, w: int, fraction: float, *, seed: int = 0) -> Tensor:
    """(N, H, W) bool: ``round(fraction * H * W)`` pixels per image, uniform without repeats."""
    k = max(1, round(fraction * h * w))
    gen = torch.Generator().manual_seed(seed)
    # the k largest of i.i.d. uniforms: a uniform k-subset, without a full sort
    idx = torch.rand(n, h * w, generator=gen).topk(k, dim=1).indices
    out = torch.zeros(n, h * w, dtype=torch.bool)
    out.scatter_(1, idx, True)
    return out.view(n, h, w)


def faithfulness(
    model: nn.Module,
    images: Tensor,
    *,
    methods: Sequence[str] = ("gradcam",),
    target_layer: str | None = None,
    targets: Tensor | None = None,
    fractions: Sequence[float] = (0.05, 0.10, 0.20),
    fill: str = "blur",
    seed: int = 0,
    n_boot: int = 1000,
    explained: Explanation | None = None,
    batch_size: int = 32,
) -> Faithfulness:
    """Deletion of the top-k% most attended pixels against the same number of random pixels.

    The pixels are filled as the audit's occlusions are (``fill``: the blurred image or its
    mean), and the drop of the target probability is measured. A map whose top pixels take no
    more away than random ones is not a faithful account of the model's evidence.
    ``explained`` and ``batch_size`` as for :func:`model_randomization`.
    Cost: one explain pass, and one forward pass per fraction for the random pixels and one
    per fraction and method for the top pixels.
    """
    methods = _map_methods(methods)
    bad = [f for f in fractions if not 0 < f < 1]
    if bad:
        raise ConfigError(f"fractions: expected shares in (0, 1), got {bad}")
    exp = _explained(model, images, methods, target_layer, targets, explained, batch_size)
    n, _, h, w = images.shape
    rand = torch.stack(
        [random_pixels(n, h, w, f, seed=seed + i) for i, f in enumerate(fractions)], 1
    )
    k = len(fractions)
    tops, oks = [], []
    for m in methods:
        maps = exp.maps[m].detach().float().cpu()
        total = maps.flatten(1).sum(1)
        oks.append(torch.isfinite(total) & (total > 0))
        tops.append(torch.stack([top_pixels(maps, f) for f in fractions], dim=1))
    # One occlusion call per chunk: the random masks are shared by every method.
    masks = torch.cat([rand, *tops], dim=1)
    drops = []
    for start in range(0, n, batch_size):
        chunk = slice(start, start + batch_size)
        occ = occlusion_effect(
            model, images[chunk], masks[chunk].to(images.device), exp.targets[chunk].cpu(),
            fill=fill, logits=exp.logits[chunk], baseline=False,
        )  # fmt: skip
        drops.append(occ.drop_prob)
    drop = torch.cat(drops)
    rows = []
    for j, (m, ok) in enumerate(zip(methods, oks, strict=True)):
        for i, f in enumerate(fractions):
            d_top = drop[ok, k * (j + 1) + i].double().numpy()
            d_rand = drop[ok, i].double().numpy()
            diff = d_top - d_rand
            lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
            rows.append({
                "method": m, "fraction": float(f),
                "drop_top": float(np.mean(d_top)) if len(d_top) else math.nan,
                "drop_random": float(np.mean(d_rand)) if len(d_rand) else math.nan,
                "excess": float(np.mean(diff)) if len(diff) else math.nan,
                "excess_ci_low": lo, "excess_ci_high": hi, "n": int(len(diff)),
            })  # fmt: skip
    return Faithfulness(table=pd.DataFrame(rows))


# -- findings --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrustFinding:
    """A failed trust check: ``code`` is one of "method_insensitive", "layer_dependent",
    "methods_disagree", "not_faithful"."""

    code: str
    model: str
    method: str
    text: str
    severity: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "model": self.model, "method": self.method,
                "text": self.text, "severity": self.severity}  # fmt: skip


def trust_findings(
    model: str,
    *,
    randomization: Randomization | None = None,
    layers: LayerSensitivity | None = None,
    faith: Faithfulness | None = None,
    max_spearman: float = 0.5,
) -> list[TrustFinding]:
    """The failed checks of one model, each a plain sentence.

    * method_insensitive: after full randomisation the method's maps keep a mean Spearman
      above ``max_spearman`` with the original ones (high: the maps do not depend on what the
      model learned).
    * layer_dependent: the confounder-attention verdict (the severity the audit's finding
      would get, or "none") of a method at the target layer is not the same at an earlier
      layer: medium when one layer would report a finding and the other none, low when only
      its severity changes.
    * methods_disagree: the methods' verdicts at the target layer differ (same severities).
    * not_faithful: at no fraction does deleting the method's top pixels lower the target
      probability more than random pixels, with 95% confidence (medium).
    """
    out: list[TrustFinding] = []
    if randomization is not None and len(randomization.table):
        t = randomization.table
        last = t[(t["order"] == "top_down") & (t["step"] == t["step"].max())]
        for r in last.itertuples(index=False):
            if math.isfinite(r.spearman) and r.spearman > max_spearman:
                out.append(TrustFinding(
                    "method_insensitive", model, r.method,
                    f"{model}: {r.method} maps barely change when every layer's weights are "
                    f"randomised (Spearman {r.spearman:.2f} > {max_spearman:g}, SSIM "
                    f"{r.ssim:.2f}); they do not show what the model learned",
                    "high",
                ))  # fmt: skip
    if layers is not None and len(layers.table):
        conf = layers.table[layers.table["role"] == CONFOUNDER]
        for m, rows in conf.groupby("method", sort=False):
            target = rows[rows["is_target"]]
            if target.empty:
                continue
            at = target.iloc[0]
            for r in rows[~rows["is_target"]].itertuples(index=False):
                if r.verdict != at["verdict"]:
                    out.append(TrustFinding(
                        "layer_dependent", model, str(m),
                        f"{model}: the attention verdict depends on the layer: {m} puts "
                        f"{at['mass']:.1%} of its mass on confounders at {at['layer']} (lift "
                        f"{at['lift']:.1f}: {at['verdict']}) but {r.mass:.1%} at {r.layer} "
                        f"(lift {r.lift:.1f}: {r.verdict})",
                        _disagreement([str(at["verdict"]), str(r.verdict)]),
                    ))  # fmt: skip
                    break
        at_target = conf[conf["is_target"]]
        verdicts = {str(r.method): r for r in at_target.itertuples(index=False)}
        if len({r.verdict for r in verdicts.values()}) > 1:
            parts = "; ".join(
                f"{m} {r.mass:.1%} (lift {r.lift:.1f}: {r.verdict})" for m, r in verdicts.items()
            )
            out.append(TrustFinding(
                "methods_disagree", model, ", ".join(verdicts),
                f"{model}: the methods disagree on confounder attention at "
                f"{at_target['layer'].iloc[0]}: {parts}",
                _disagreement([str(r.verdict) for r in verdicts.values()]),
            ))  # fmt: skip
    if faith is not None and len(faith.table):
        for m, rows in faith.table.groupby("method", sort=False):
            if not (rows["excess_ci_low"] > 0).any():
                worst = rows.iloc[0]
                out.append(TrustFinding(
                    "not_faithful", model, str(m),
                    f"{model}: deleting the {worst['fraction']:.0%} most attended pixels of "
                    f"{m} lowers the target probability by {worst['drop_top']:.3f}, random "
                    f"pixels by {worst['drop_random']:.3f}: the map is no better than chance "
                    "at finding the model's evidence",
                    "medium",
                ))  # fmt: skip
    return out
