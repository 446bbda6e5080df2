"""``explain``: every requested map from one forward pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bias_audit.core._malloc import keep_freed_memory
from bias_audit.core.maps._capture import Capture, capture
from bias_audit.core.maps._layers import (
    Grid,
    Reshape,
    fast_layout,
    layer_output,
    resolve_target_layer,
    to_grid,
)
from bias_audit.core.maps._weights import WEIGHTS, compute_dtype, gradcam, weighted_map
from bias_audit.errors import ConfigError, DataError, ModelError

Target = Tensor | Sequence[int] | Callable[[Tensor], Tensor] | None


@dataclass(frozen=True)
class Explanation:
    """The maps of one batch, and what they were computed from.

    Attributes:
        logits: (N, C) float32, the model output of the same forward pass (detached). For a
            callable target this is whatever tensor the model returned.
        targets: (N,) long class indices explained; for a callable target, the (N,) float
            scores it returned.
        maps: method name -> (N, H, W) float32 >= 0 at the input's resolution, not normalised;
            guided methods give signed (N, C_in, H, W). Read-only.
        target_layer: dotted name of the layer the maps were taken at, e.g. ``"layer4"``.
        layer_shape: (h, w) of that layer: how coarse the maps really are.
    """

    logits: Tensor
    targets: Tensor
    maps: Mapping[str, Tensor]
    target_layer: str
    layer_shape: tuple[int, int]


@dataclass(frozen=True)
class _Raw:
    """Maps before upsampling: the engine's result, kept separate so tests can see layer maps."""

    logits: Tensor
    targets: Tensor
    layer_maps: dict[str, Tensor]  # (N, h, w)
    input_grads: dict[str, Tensor]  # rule -> (N, C_in, H, W)
    target_layer: str
    layer_shape: tuple[int, int]


def _check_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    if not isinstance(methods, Sequence) or not methods:
        raise ConfigError(f"methods: expected a non-empty sequence of names from {METHODS}")
    for name in methods:
        if name not in METHODS:
            raise ConfigError(f"methods: unknown method {name!r}; valid: {', '.join(METHODS)}")
    return tuple(dict.fromkeys(methods))


def _check_images(images: object) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise DataError(f"images: expected a float tensor (N, C, H, W), got {got}")
    if images.shape[0] == 0:
        raise DataError("images: the batch is empty")
    return images


def _check_targets(targets: Target, n: int) -> Tensor | Callable[[Tensor], Tensor] | None:
    if targets is None or (callable(targets) and not isinstance(targets, Tensor)):
        return targets
    try:
        t = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"targets: expected class indices (N,), got {targets!r}") from err
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.ndim != 1:
        raise ConfigError(
            f"targets: expected integer class indices of shape (N,), got {t.dtype} {tuple(t.shape)}"
        )
    if len(t) != n:
        raise ConfigError(f"targets: {len(t)} targets for a batch of {n} images")
    return t.long()


def _scores(
    output: object, targets: Tensor | Callable[[Tensor], Tensor] | None
) -> tuple[Tensor, Tensor]:
    """(scores (N,) that keep the graph, targets as reported)."""
    if not isinstance(output, Tensor):
        raise ModelError(f"model output: expected a tensor, got {type(output).__name__}")
    n = output.shape[0]
    if callable(targets):
        scores = targets(output)
        if not isinstance(scores, Tensor) or scores.shape != (n,):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ConfigError(
                f"targets: the callable must return scores of shape ({n},), got {got}"
            )
        return scores, scores.detach().float()
    if output.ndim != 2:
        raise ModelError(
            f"model output has shape {tuple(output.shape)}, not (N, C) logits; pass a callable "
            "targets= that turns it into (N,) scores"
        )
    n_classes = output.shape[1]
    if targets is None:
        targets = output.detach().argmax(dim=1)
    else:
        targets = targets.to(output.device)
        if targets.is_inference():  # made under inference_mode: autograd cannot save it
            targets = targets.clone()
        bad = ((targets < 0) | (targets >= n_classes)).nonzero()
        if len(bad):
            i = int(bad[0, 0])
            raise ConfigError(
                f"targets[{i}] = {int(targets[i])} is out of range for {n_classes} classes"
            )
    return output.gather(1, targets[:, None]).squeeze(1), targets


def _linear_head(
    records: list[tuple[nn.Linear, Tensor, Tensor]], output: Tensor, act: Tensor, name: str
) -> nn.Linear:
    """The GAP + linear head after the target layer, or ModelError."""
    why = "no nn.Linear gives the model output"
    for linear, inp, out in reversed(records):
        if out is not output and not (out.shape == output.shape and torch.equal(out, output)):
            continue
        gap = act.mean(dim=(2, 3))
        # The model pooled in its own precision; the map's copy of the layer is float32.
        tol = max(1e-4, 4 * torch.finfo(inp.dtype).eps)
        inp = inp.to(gap.dtype)
        if inp.shape != gap.shape:
            why = f"the input of the final linear layer has shape {tuple(inp.shape)}"
        elif not torch.allclose(inp, gap, rtol=tol, atol=tol / 10 * (1 + float(gap.abs().max()))):
            why = "the input of the final linear layer is not the spatial mean of the layer"
        else:
            return linear
        break
    raise ModelError(
        f"'cam' needs a GAP + linear head right after target_layer {name!r}: {why}; "
        "use 'gradcam' (equal to CAM up to a constant on such models)"
    )


def _scorecam(
    model: nn.Module,
    images: Tensor,
    act: Tensor,
    targets: Tensor | Callable[[Tensor], Tensor],
    batch_size: int,
) -> Tensor:
    """Score-CAM weights and map (N, h, w); runs N * K extra forward passes in channel batches."""
    n, k = act.shape[:2]
    size = images.shape[-2:]
    weights = torch.empty(n, k, dtype=act.dtype, device=act.device)
    with torch.no_grad():
        for i in range(n):
            for start in range(0, k, batch_size):
                chunk = act[i : i + 1, start : start + batch_size]
                up = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False)[0]
                flat = up.flatten(1)
                low = flat.min(dim=1).values[:, None, None]
                span = flat.max(dim=1).values[:, None, None] - low
                # A constant channel masks nothing useful out: give it an all-zero mask.
                mask = torch.where(span > 0, (up - low) / torch.where(span > 0, span, 1.0), 0.0)
                out = model(images[i : i + 1] * mask[:, None].to(images.dtype))
                if callable(targets):
                    score = targets(out)
                else:
                    score = out.softmax(dim=1)[:, targets[i]]
                weights[i, start : start + len(chunk[0])] = score.reshape(-1).to(act.dtype)
    return weighted_map(act, weights[:, :, None, None])


@dataclass(frozen=True)
class _Pass:
    """What the one forward and backward gave; every method's layer map is made from it."""

    model: nn.Module
    images: Tensor  # detached, for methods that run the model again
    grid: Tensor  # (N, K, h, w) target layer output, float32 at least
    grad: Tensor | None  # d score / d grid, same shape and dtype, if a method needs it
    output: Tensor
    targets: Tensor | Callable[[Tensor], Tensor] | None  # as the caller gave them
    used: Tensor  # the (N,) class indices (or scores) explained
    linears: list[tuple[nn.Linear, Tensor, Tensor]]
    name: str
    scorecam_batch_size: int
    reshape: Reshape | None
    attentions: list[Tensor]  # (N, heads, T, T) per nn.MultiheadAttention call, in order
    # d score / d attention weights, same shapes, if a method needs them
    attention_grads: list[Tensor] = field(default_factory=list)


def _given(t: Tensor | None, what: str) -> Tensor:
    """``t``, which the method's flags asked the pass for; None is a registry bug, not input."""
    if t is None:
        raise AssertionError(f"the pass did not compute {what} for this method")
    return t


@dataclass(frozen=True)
class _Method:
    """What a method needs from the pass, and how its map is made from it.

    Attributes:
        layer_grad: the score's gradient at the target layer (one ``autograd.grad`` serves all).
        input_rule: the ReLU backward rule (see ``_guided``) of a gradient down to the pixels.
        head: the GAP + linear head after the layer (the ``nn.Linear`` calls are recorded).
        extra_passes: runs the model again after the pass (Score-CAM).
        attention: reads the attention weights of every ``nn.MultiheadAttention`` call.
        attention_grad: also the score's gradient w.r.t. each of them: the graph then starts
            at the first attention call instead of the target layer (costs memory).
        layer_map: the (N, h, w) map at the layer, or None for a pure input-gradient method.
        combine: (upsampled layer map or None, input gradient or None) -> the returned map;
            None returns the upsampled layer map.
    """

    layer_grad: bool = False
    input_rule: str | None = None
    head: bool = False
    extra_passes: bool = False
    attention: bool = False
    attention_grad: bool = False
    layer_map: Callable[[_Pass], Tensor] | None = None
    combine: Callable[[Tensor | None, Tensor | None], Tensor] | None = None


def _weighted(name: str) -> Callable[[_Pass], Tensor]:
    def layer_map(p: _Pass) -> Tensor:
        return weighted_map(p.grid, WEIGHTS[name](p.grid, _given(p.grad, "the layer gradient")))

    return layer_map


def _gradcam_map(p: _Pass) -> Tensor:
    return gradcam(p.grid, _given(p.grad, "the layer gradient"))


def _cam_map(p: _Pass) -> Tensor:
    if callable(p.targets):
        raise ConfigError("'cam' needs class-index targets, not a callable")
    head = _linear_head(p.linears, p.output, p.grid, p.name)
    w = head.weight.detach()[p.used]  # (N, K)
    return weighted_map(p.grid, w[:, :, None, None])


def _scorecam_map(p: _Pass) -> Tensor:
    targets = p.targets if callable(p.targets) else p.used
    return _scorecam(p.model, p.images, p.grid, targets, p.scorecam_batch_size)


def _input_grad(_up: Tensor | None, g: Tensor | None) -> Tensor:
    return _given(g, "the input gradient")


def _token_grid(p: _Pass, method: str) -> Grid:
    """The target layer's token grid, checked against the tokens the attention mixes."""
    grid = p.reshape
    if not p.attentions:
        raise ModelError(
            f"{method!r} needs nn.MultiheadAttention layers (torchvision's ViT); "
            "the model has none that was called"
        )
    t = p.attentions[0].shape[-1]
    if not isinstance(grid, Grid) or grid.layout != "tokens" or grid.extra + grid.numel != t:
        raise ModelError(
            f"{method!r}: target_layer {p.name!r} is not a token layer of the "
            f"{t} tokens the attention mixes; pick one (a ViT's last ln_1)"
        )
    return grid


def _class_row(relevance: Tensor, grid: Grid) -> Tensor:
    """The class token's row over the patches (N, h, w); without a class token, the patches'
    rows are averaged: what all the patches read."""
    e = grid.extra
    row = relevance[:, 0, e:] if e else relevance[:, e:, e:].mean(dim=1)
    return row.reshape(relevance.shape[0], *grid.shape)


def _rollout_map(p: _Pass) -> Tensor:
    """Attention rollout (Abnar and Zuidema 2020): the product over layers of the head-mean
    attention with the residual added (0.5 A + 0.5 I, rows renormalised); the class token's row
    over the patches, laid out on the target layer's patch grid. Class-agnostic."""
    grid = _token_grid(p, "attention_rollout")
    n, _, t, _ = p.attentions[0].shape
    work = compute_dtype(p.attentions[0].dtype)
    eye = torch.eye(t, dtype=work, device=p.attentions[0].device)
    roll = eye.expand(n, t, t)
    for attn in p.attentions:
        a = 0.5 * attn.to(work).mean(dim=1) + 0.5 * eye
        roll = (a / a.sum(dim=-1, keepdim=True)) @ roll
    return _class_row(roll, grid)


def _attention_gradient_map(p: _Pass) -> Tensor:
    """Gradient-weighted attention rollout (Chefer, Gur and Wolf, ICCV 2021, the rule for
    self-attention): per block A_bar = mean over heads of relu(dS/dA * A), and
    R <- R + A_bar @ R from R = I, blocks in call order; the class token's row over the
    patches. Class-specific through the gradient."""
    grid = _token_grid(p, "attention_gradient")
    n, _, t, _ = p.attentions[0].shape
    work = compute_dtype(p.attentions[0].dtype)
    rel = torch.eye(t, dtype=work, device=p.attentions[0].device).expand(n, t, t)
    for attn, grad in zip(p.attentions, p.attention_grads, strict=True):
        a_bar = (grad.to(work) * attn.to(work)).clamp(min=0).mean(dim=1)
        rel = rel + a_bar @ rel
    return _class_row(rel, grid)


_METHODS: dict[str, _Method] = {
    "cam": _Method(head=True, layer_map=_cam_map),
    "gradcam": _Method(layer_grad=True, layer_map=_gradcam_map),
    "gradcam++": _Method(layer_grad=True, layer_map=_weighted("gradcam++")),
    "xgradcam": _Method(layer_grad=True, layer_map=_weighted("xgradcam")),
    "layercam": _Method(layer_grad=True, layer_map=_weighted("layercam")),
    "hirescam": _Method(layer_grad=True, layer_map=_weighted("hirescam")),
    "counterfactual": _Method(layer_grad=True, layer_map=_weighted("counterfactual")),
    "scorecam": _Method(extra_passes=True, layer_map=_scorecam_map),
    "attention_rollout": _Method(attention=True, layer_map=_rollout_map),
    "attention_gradient": _Method(
        attention=True, attention_grad=True, layer_map=_attention_gradient_map
    ),
    "guided_backprop": _Method(input_rule="guided", combine=_input_grad),
    "deconvnet": _Method(input_rule="deconvnet", combine=_input_grad),
    "guided_gradcam": _Method(
        layer_grad=True,
        input_rule="guided",
        layer_map=_gradcam_map,
        combine=lambda up, g: (
            _given(g, "the input gradient") * _given(up, "the layer map")[:, None]
        ),
    ),
}

METHODS: tuple[str, ...] = tuple(_METHODS)


def _run(
    model: nn.Module,
    images: Tensor,
    methods: tuple[str, ...],
    *,
    target_layer: str | nn.Module | None,
    targets: Tensor | Callable[[Tensor], Tensor] | None,
    reshape: Reshape | None,
    scorecam_batch_size: int,
) -> _Raw:
    (raw,) = _run_layers(
        model, images, methods, target_layers=(target_layer,), targets=targets,
        reshape=reshape, scorecam_batch_size=scorecam_batch_size,
    )  # fmt: skip
    return raw


def _run_layers(
    model: nn.Module,
    images: Tensor,
    methods: tuple[str, ...],
    *,
    target_layers: Sequence[str | nn.Module | None],
    targets: Tensor | Callable[[Tensor], Tensor] | None,
    reshape: Reshape | None,
    scorecam_batch_size: int,
) -> list[_Raw]:
    """The maps at each of ``target_layers`` (one ``_Raw`` each, in order) from one forward
    pass and one ``autograd.grad`` for all layers: the earliest hooked layer's output is the
    graph's leaf, the later ones stay connected to it (see ``Capture``)."""
    needs = [_METHODS[m] for m in methods]
    rules = list(dict.fromkeys(n.input_rule for n in needs if n.input_rule))
    grad_mode = (torch.inference_mode(False), torch.enable_grad())
    with capture(model, guided=bool(rules)) as cap, grad_mode[0], grad_mode[1]:
        x = images.detach()
        if x.is_inference():
            x = x.clone()
        resolved = [resolve_target_layer(model, t, x, reshape) for t in target_layers]
        x = fast_layout(model, x)
        for layer in dict.fromkeys(layer for _, layer, _ in resolved):
            cap.hook_layer(layer)
        linears: list[tuple[nn.Linear, Tensor, Tensor]] = []
        if any(n.head for n in needs):
            _watch_linears(model, cap, linears)
        attentions: list[Tensor] = []
        live: list[Tensor] | None = None
        if any(n.attention_grad for n in needs):
            # The graph starts at the first attention call, and the layer's copy stays on it.
            live, cap.record_input = [], True
        if any(n.attention for n in needs):
            _watch_attention(model, cap, attentions, live=live)
        if rules:
            # A copy, so the user's tensor keeps its requires_grad and its .grad.
            x = x.clone().requires_grad_(True)
        output = model(x)
        acts = []
        for name, layer, _ in resolved:
            act = cap.activations.get(layer)
            if act is None:
                if layer in cap.other_outputs:
                    layer_output(cap.other_outputs[layer], name)
                raise ModelError(f"target_layer {name!r} was not called during the forward pass")
            acts.append(act)
        # Weights and sums in float32 at least, whatever the model's precision.
        grids = [
            to_grid(act.detach(), rs, name).to(compute_dtype(act.dtype))
            for act, (name, _, rs) in zip(acts, resolved, strict=True)
        ]
        scores, used = _scores(output, targets)
        total = scores.sum()  # images are independent in eval mode: one backward for all

        attention_grads = [] if live is None else _attention_grads(total, live)
        grads: list[Tensor | None] = [None] * len(resolved)
        if any(n.layer_grad for n in needs):
            got = (
                _layer_grad(total, acts, retain_graph=bool(rules))
                if total.requires_grad
                else [None] * len(acts)
            )
            for i, (g, (name, _, rs)) in enumerate(zip(got, resolved, strict=True)):
                if g is None:
                    raise ModelError(f"target_layer {name!r}: the scores do not depend on it")
                grads[i] = to_grid(g, rs, name)
        input_grads: dict[str, Tensor] = {}
        for j, rule in enumerate(rules):
            cap.rule.mode = rule
            try:
                (g_in,) = torch.autograd.grad(total, x, retain_graph=j < len(rules) - 1)
            finally:
                cap.rule.mode = "plain"
            input_grads[rule] = g_in
        # The pass is over: extra passes (Score-CAM) must not overwrite what it recorded.
        cap.enabled = False
        src = images.detach()
        if any(n.extra_passes for n in needs) and src.is_inference():
            src = src.clone()
        raws = []
        for (name, _, rs), grid, grad in zip(resolved, grids, grads, strict=True):
            state = _Pass(
                model=model, images=src, grid=grid, grad=grad, output=output, targets=targets,
                used=used, linears=linears, name=name, scorecam_batch_size=scorecam_batch_size,
                reshape=rs, attentions=attentions, attention_grads=attention_grads,
            )  # fmt: skip
            layer_maps: dict[str, Tensor] = {}
            for m, need in zip(methods, needs, strict=True):
                if need.layer_map is not None:
                    layer_maps[m] = need.layer_map(state)
            raws.append(_Raw(
                logits=output.detach().float(),
                targets=used,
                layer_maps={k: v.detach().float() for k, v in layer_maps.items()},
                input_grads={k: v.detach().float() for k, v in input_grads.items()},
                target_layer=name,
                layer_shape=(int(grid.shape[2]), int(grid.shape[3])),
            ))  # fmt: skip
        return raws


def _layer_grad(
    total: Tensor, acts: Sequence[Tensor], *, retain_graph: bool
) -> list[Tensor | None]:
    """d total / d act for each of ``acts`` in ``compute_dtype``, from one ``autograd.grad``;
    None for an act that ``total`` does not depend on.

    In float16 the gradients of a quiet model fall below its smallest number on their way
    down to the layer and flush to zero. As mixed-precision training scales its loss, the
    backward starts from a large power of two (exact to undo), backing off on overflow.
    """
    half = any(a.dtype == torch.float16 for a in acts)
    scales = (2.0**14, 2.0**7, 1.0) if half else (1.0,)
    for i, scale in enumerate(scales):
        last = i == len(scales) - 1
        seed = torch.full_like(total, scale)
        raw = torch.autograd.grad(
            total, list(acts), grad_outputs=seed, retain_graph=retain_graph or not last,
            allow_unused=True,
        )  # fmt: skip
        grads = [None if g is None else g.to(compute_dtype(g.dtype)) for g in raw]
        if last or all(g is None or bool(torch.isfinite(g).all()) for g in grads):
            return [None if g is None else g / scale for g in grads]
    raise AssertionError("unreachable")


def _watch_linears(
    model: nn.Module, cap: Capture, records: list[tuple[nn.Linear, Tensor, Tensor]]
) -> None:
    def record(module: nn.Module, args: tuple[object, ...], output: object) -> None:
        # Hooked on nn.Linear only; the isinstance narrows the hook's generic signature.
        if not (cap.enabled and isinstance(module, nn.Linear) and args):
            return
        if isinstance(args[0], Tensor) and isinstance(output, Tensor):
            records.append((module, args[0].detach(), output))

    for module in model.modules():
        if isinstance(module, nn.Linear):
            cap.add_hook(module, record)


def _watch_attention(
    model: nn.Module, cap: Capture, records: list[Tensor], *, live: list[Tensor] | None = None
) -> None:
    """Record each nn.MultiheadAttention call's per-head weights, without changing the model:
    a pre-hook asks the call for them (the caller discards the second output anyway).

    With ``live``, the weights are also kept on the graph, which starts at the first call's
    inputs (detached copies that require grad: the values are the same).
    """

    def ask(
        _module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> tuple[tuple[object, ...], dict[str, object]]:
        if not cap.enabled:
            return args, kwargs
        kwargs = {**kwargs, "need_weights": True, "average_attn_weights": False}
        if live is not None and not records:
            leaves: dict[int, Tensor] = {}

            def leaf(v: object) -> object:
                if not isinstance(v, Tensor) or not v.is_floating_point():
                    return v
                # q, k and v are usually one tensor: they stay one leaf.
                return leaves.setdefault(id(v), v.detach().requires_grad_(True))

            args = tuple(leaf(a) for a in args)
            qkv = ("query", "key", "value")
            kwargs = {k: leaf(v) if k in qkv else v for k, v in kwargs.items()}
        return args, kwargs

    def record(_module: nn.Module, _args: object, output: object) -> None:
        if cap.enabled and isinstance(output, tuple) and isinstance(output[1], Tensor):
            records.append(output[1].detach())
            if live is not None:
                live.append(output[1])

    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            cap.handles.append(module.register_forward_pre_hook(ask, with_kwargs=True))
            cap.add_hook(module, record)


def _attention_grads(total: Tensor, live: list[Tensor]) -> list[Tensor]:
    """d total / d each recorded attention weight tensor (N, heads, T, T), in ``compute_dtype``.

    The (N, heads, T, T) tensor nn.MultiheadAttention returns is a view taken after the
    weights were used; the gradient is the one of the tensor it views, which the values
    were multiplied with.
    """
    if not live:
        return []
    sources = [w if w._base is None else w._base for w in live]
    grads = None
    if total.requires_grad and all(s.requires_grad for s in sources):
        grads = torch.autograd.grad(total, sources, retain_graph=True, allow_unused=True)
    if grads is None or any(g is None for g in grads):
        raise ModelError(
            "'attention_gradient': the scores do not depend on the attention weights the "
            "model's nn.MultiheadAttention calls return"
        )
    return [g.reshape(w.shape).to(compute_dtype(w.dtype)) for g, w in zip(grads, live, strict=True)]


def explain(
    model: nn.Module,
    images: Tensor,
    methods: str | Sequence[str] = ("gradcam",),
    *,
    target_layer: str | nn.Module | None = None,
    targets: Target = None,
    reshape: Reshape | None = None,
    scorecam_batch_size: int = 32,
) -> Explanation:
    """Class-activation maps of ``model`` for a batch, from one forward pass.

    The pass runs in eval mode with every parameter frozen: nothing before the target layer
    records a graph, one ``autograd.grad`` (down to the target layer only) serves every
    gradient-based map, and no ``.grad`` is touched. Hooks, ``requires_grad`` and ``training``
    flags are restored afterwards, also when the pass raises.

    Args:
        model: an image classifier (or any module; see ``targets``).
        images: (N, C, H, W) float, already normalised as the model expects.
        methods: names from ``METHODS``. Guided methods ("guided_backprop", "deconvnet",
            "guided_gradcam") make the pass record from the input, which costs memory.
        target_layer: a module of ``model``, its dotted name (``"layer4"``, ``"features.28"``)
            or None for the last module with a spatial (N, C, h, w) output (adaptive pooling
            excluded); torchvision ViT and Swin get their usual layer and reshape.
        targets: None for the predicted class; (N,) class indices; or a callable
            ``f(output) -> (N,)`` giving the scores to explain (a regression output: RAM).
        reshape: turns the target layer's output into (N, C, h, w), e.g. tokens to a grid.
            Automatic for torchvision ViT and Swin.
        scorecam_batch_size: masked images per extra forward pass of Score-CAM.

    Returns:
        An :class:`Explanation`; ``maps[m]`` is (N, H, W) float32 >= 0 (not normalised) for the
        CAM family and signed (N, C, H, W) for guided methods. No NaN is produced.

    Raises:
        ConfigError, DataError, ModelError: unknown method, targets of the wrong length or out
            of range, a layer
            with no spatial output or an unknown layer name, "cam" without a GAP + linear head.

    Example:
        >>> exp = explain(model, images, methods=("gradcam", "gradcam++"), target_layer="layer4")
        >>> exp.maps["gradcam"].shape  # (N, H, W)
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    keep_freed_memory()
    methods = _check_methods(methods)
    images = _check_images(images)
    if not isinstance(scorecam_batch_size, int) or scorecam_batch_size < 1:
        raise ConfigError(f"scorecam_batch_size: expected an int >= 1, got {scorecam_batch_size!r}")
    checked = _check_targets(targets, images.shape[0])
    raw = _run(
        model,
        images,
        methods,
        target_layer=target_layer,
        targets=checked,
        reshape=reshape,
        scorecam_batch_size=scorecam_batch_size,
    )
    return _explanation(raw, methods, (images.shape[-2], images.shape[-1]))


def explain_layers(
    model: nn.Module,
    images: Tensor,
    methods: str | Sequence[str] = ("gradcam",),
    *,
    layers: Sequence[str | nn.Module | None],
    targets: Target = None,
    scorecam_batch_size: int = 32,
) -> dict[str, Explanation]:
    """:func:`explain` at several layers from one forward pass and one backward pass.

    Every layer is hooked in the same forward pass; the earliest one's output is where the
    graph starts and the later ones stay connected to it, so a single ``autograd.grad`` gives
    the score's gradient at all of them. Each layer's maps equal those of a separate
    ``explain(..., target_layer=layer)`` call (same targets); the cost is that of one call at
    the earliest layer. Flags and hooks are restored as by :func:`explain`.

    Args:
        layers: modules, dotted names or None (the automatic layer), as ``target_layer`` of
            :func:`explain`; each gets its automatic reshape. Repeats count once.
        model, images, methods, targets, scorecam_batch_size: as for :func:`explain`.

    Returns:
        Dotted layer name -> its :class:`Explanation`, in the order of ``layers``.

    Raises:
        ConfigError, DataError, ModelError: as :func:`explain`; ConfigError for no layers.

    Example:
        >>> exps = explain_layers(model, images, layers=["layer4", "layer3", "layer2"])
        >>> exps["layer3"].maps["gradcam"].shape  # (N, H, W)
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    methods = _check_methods(methods)
    images = _check_images(images)
    if isinstance(layers, (str, nn.Module)) or not isinstance(layers, Sequence) or not layers:
        raise ConfigError(f"layers: expected a non-empty sequence of layers, got {layers!r}")
    if not isinstance(scorecam_batch_size, int) or scorecam_batch_size < 1:
        raise ConfigError(f"scorecam_batch_size: expected an int >= 1, got {scorecam_batch_size!r}")
    checked = _check_targets(targets, images.shape[0])
    raws = _run_layers(
        model, images, methods, target_layers=list(layers), targets=checked, reshape=None,
        scorecam_batch_size=scorecam_batch_size,
    )  # fmt: skip
    size = (images.shape[-2], images.shape[-1])
    return {raw.target_layer: _explanation(raw, methods, size) for raw in raws}


def _explanation(raw: _Raw, methods: tuple[str, ...], size: tuple[int, int]) -> Explanation:
    """The returned maps: layer maps upsampled to ``size``, combined with input gradients."""
    up = {k: upsample(v, size) for k, v in raw.layer_maps.items()}
    maps: dict[str, Tensor] = {}
    for m in methods:
        need = _METHODS[m]
        if need.combine is None:
            maps[m] = up[m]
        else:
            maps[m] = need.combine(up.get(m), raw.input_grads.get(need.input_rule or ""))
    return Explanation(
        logits=raw.logits,
        targets=raw.targets,
        maps=MappingProxyType(maps),
        target_layer=raw.target_layer,
        layer_shape=raw.layer_shape,
    )


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, h, w) -> (N, H, W), bilinear with align_corners=False (REFERENCES.md)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
