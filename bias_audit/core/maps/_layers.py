"""Target-layer resolution, and the rule that lays any layer's output out as (N, C, h, w).

A one-image probe pass (cached per model and input shape) records the output shape of every
module. From it, by rule and not by a list of model names:

- (N, C, h, w) is used as it is;
- (N, h, w, C) (Swin, ConvNeXt-style blocks) is recognised because (h, w) fit the input's
  aspect at a common stride and (w, C) do not;
- (N, T, D) tokens are laid out on the patch grid (h, w) of the model's patch embedding (the
  last (N, D, h, w) output before them with the same width D), or, without one, on the grid
  that fits the input's aspect with the fewest tokens left over. The ``T - h*w`` tokens left
  over (class, distillation, register tokens) are dropped; they lead the sequence, as in
  torchvision, timm and DINOv2. Another layout needs ``reshape=``.
"""

from __future__ import annotations

import difflib
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bias_audit.errors import ConfigError, ModelError

Reshape = Callable[[Tensor], Tensor]

# Pooling layers only resample the layer before them; a map on their output is no finer.
_RESAMPLERS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# Leftover tokens beyond this many are not class/register tokens: the layout is something else.
_MAX_EXTRA_TOKENS = 16


@dataclass(frozen=True)
class Grid:
    """How a layer's output is laid out, and the reshape to (N, C, h, w) it implies.

    Attributes:
        layout: "channels_first" (N, C, h, w), "channels_last" (N, h, w, C) or "tokens"
            (N, extra + h*w, C).
        shape: (h, w) of the grid.
        extra: leading non-patch tokens (class, distillation, registers); 0 unless "tokens".
    """

    layout: str
    shape: tuple[int, int]
    extra: int = 0

    def __call__(self, out: Tensor) -> Tensor:
        h, w = self.shape
        if self.layout == "channels_last" and out.ndim == 4 and tuple(out.shape[1:3]) == (h, w):
            return out.permute(0, 3, 1, 2)
        if self.layout == "tokens" and out.ndim == 3 and out.shape[1] == self.extra + h * w:
            patches = out[:, self.extra :]
            return patches.transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)
        # Any other shape is left as it is: to_grid then names the layer and the shape.
        return out

    @property
    def numel(self) -> int:
        """Positions on the grid, h * w."""
        return self.shape[0] * self.shape[1]

    @property
    def reshape(self) -> Reshape | None:
        """The reshape to pass on, or None where the output is already (N, C, h, w)."""
        return None if self.layout == "channels_first" else self


@dataclass(frozen=True)
class _Seen:
    name: str
    module: nn.Module
    shape: tuple[int, ...]
    view: bool  # the output is a view of the input: a permute or flatten
    before_attention: int  # attention calls started before this output was made


@dataclass(frozen=True)
class _Probe:
    seen: tuple[_Seen, ...]
    grids: dict[str, Grid]  # last call's layout of every module with a grid-shaped output
    attention_calls: int
    channels_last: bool  # a channels-last input ran (see fast_layout)


# model -> {input shape without batch: probe}; avoids a probe pass on every call.
_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], _Probe]] = (
    weakref.WeakKeyDictionary()
)


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(module, name)
    return names


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention")


def _fits(a: int, b: int, size: tuple[int, int]) -> bool:
    """(a, b) is the input's (H, W) at one stride s, each side rounded: |a - H/s| <= 1 and
    |b - W/s| <= 1 for some s."""
    big, wide = size
    if not (0 < a <= big and 0 < b <= wide):
        return False
    lo = max(big / (a + 1), wide / (b + 1))
    hi = min(big / (a - 1) if a > 1 else math.inf, wide / (b - 1) if b > 1 else math.inf)
    return lo <= hi


def _token_grid(tokens: int, size: tuple[int, int]) -> tuple[tuple[int, int], int] | None:
    """Without a patch embedding to read it from: the grid of square p x p patches
    (h = H // p, w = W // p) that leaves the fewest tokens over, exact tilings first."""
    big, wide = size
    for exact in (True, False):
        for extra in range(min(_MAX_EXTRA_TOKENS, tokens - 1) + 1):
            for p in range(1, min(big, wide) + 1):
                h, w = big // p, wide // p
                if h * w == tokens - extra and (not exact or (big % p == 0 and wide % p == 0)):
                    return (h, w), extra
    return None


def _layout(
    shape: tuple[int, ...], size: tuple[int, int], convs: list[tuple[int, int, int]]
) -> Grid | None:
    """The grid of one output shape (batch 1), or None if it is not one."""
    if shape[0] != 1:
        return None
    if len(shape) == 4:
        _, c, h, w = shape
        if not _fits(h, w, size) and _fits(c, h, size):
            return Grid("channels_last", (c, h))
        return Grid("channels_first", (h, w))
    if len(shape) == 3:
        _, tokens, width = shape
        for c, h, w in reversed(convs):
            if c == width and 0 <= tokens - h * w <= _MAX_EXTRA_TOKENS:
                return Grid("tokens", (h, w), tokens - h * w)
        found = _token_grid(tokens, size)
        if found is not None:
            return Grid("tokens", found[0], found[1])
    return None


def _probe(model: nn.Module, images: Tensor) -> _Probe:
    """Every module's output shape from a one-image pass in eval mode (flags restored)."""
    key = tuple(images.shape[1:])
    cache = _PROBES.setdefault(model, {})
    if key in cache:
        return cache[key]
    names = _module_names(model)
    seen: list[_Seen] = []
    attention = [0]

    def record(module: nn.Module, args: tuple[object, ...], output: object) -> None:
        if isinstance(output, Tensor) and output.ndim in (3, 4):
            first = args[0] if args and isinstance(args[0], Tensor) else None
            # A new tensor on the input's storage relabels it (permute, flatten); an in-place op
            # (ReLU(inplace=True)) returns the input itself and is a layer in its own right.
            view = (
                first is not None
                and output is not first
                and output.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
            )
            seen.append(_Seen(names[module], module, tuple(output.shape), view, attention[0]))

    def count(_module: nn.Module, _args: object) -> None:
        attention[0] += 1

    handles = [m.register_forward_hook(record) for m in names]
    handles += [m.register_forward_pre_hook(count) for m in names if _is_attention(m)]
    # Eval mode for the probe: a training-mode pass would move BatchNorm's running statistics
    # (the trainer resolves its layer on a fresh model in training mode).
    training = [(m, m.training) for m in names]
    channels_last = _eligible(images)
    try:
        model.eval()
        with torch.no_grad():
            if channels_last:
                try:
                    model(images[:1].contiguous(memory_format=torch.channels_last))
                except RuntimeError:
                    # e.g. ``x.view(n, -1)`` on an activation needs NCHW storage; the NCHW
                    # pass below raises whatever else is wrong.
                    channels_last = False
                    seen.clear()
                    attention[0] = 0
            if not channels_last:
                model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in training:
            m.training = flag
    size = (int(images.shape[-2]), int(images.shape[-1]))
    convs: list[tuple[int, int, int]] = []
    grids: dict[str, Grid] = {}
    for s in seen:
        grid = _layout(s.shape, size, convs)
        if grid is None:
            grids.pop(s.name, None)
            continue
        grids[s.name] = grid
        if grid.layout == "channels_first":
            convs.append((s.shape[1], *grid.shape))
    cache[key] = _Probe(tuple(seen), grids, attention[0], channels_last)
    return cache[key]


def _eligible(images: Tensor) -> bool:
    """A CPU float batch of several channels: where channels-last storage is faster."""
    return (
        images.ndim == 4
        and images.device.type == "cpu"
        and images.is_floating_point()
        and images.shape[1] > 1
        and images.shape[0] > 0
    )


def fast_layout(model: nn.Module, images: Tensor) -> Tensor:
    """``images`` in channels-last storage when they are a CPU float batch the model runs that
    way; else ``images`` as they are.

    torch's CPU max-pooling runs several times faster on channels-last (N, H, W, C) storage
    than on NCHW, and oneDNN's convolutions prefer it too; a channels-last input makes each
    convolution's output channels-last as well, without touching the model's weights
    (``benchmarks/explain_bench.py``, case (e) against (a), gives the gain on a ResNet-50).
    The values are the same to float rounding (about 1e-6 of the logits), and the same with 1
    and 2 threads. Whether the model accepts it (code such as ``x.view(n, -1)`` on an
    activation needs NCHW) is found by the layout probe's one-image pass, once per model and
    input shape. On CUDA, cuDNN picks.
    """
    if not _eligible(images) or not _probe(model, images).channels_last:
        return images
    return images.contiguous(memory_format=torch.channels_last)


def _default_layer(probe: _Probe) -> str:
    """The last module with a grid output of more than one position, skipping adaptive pools
    (they only resample) and views (a permute or flatten of the layer before); for a token
    model with a class token, the last such module before the last attention starts."""
    candidates = [
        s
        for s in probe.seen
        if s.name
        and s.name in probe.grids
        and math.prod(probe.grids[s.name].shape) > 1
        and not isinstance(s.module, _RESAMPLERS)
        and not s.view
    ]
    if not candidates:
        raise ModelError(
            "target_layer=None: no module of the model gives a spatial (N, C, h, w), "
            "(N, h, w, C) or token output; pass target_layer= and reshape="
        )
    last = candidates[-1]
    if probe.grids[last.name].extra and probe.attention_calls:
        # The class token only mixes with the patches in attention: after the last attention
        # the patches no longer reach the score (their gradient is zero), so the layer must
        # precede it: the last block's first norm, as is usual for Grad-CAM on ViTs.
        before = [
            s
            for s in candidates
            if s.before_attention < probe.attention_calls and probe.grids[s.name].extra
        ]
        if before:
            last = before[-1]
    return last.name


def resolve_target_layer(
    model: nn.Module,
    target_layer: str | nn.Module | None,
    images: Tensor,
    reshape: Reshape | None,
) -> tuple[str, nn.Module, Reshape | None]:
    """Find the target layer and the reshape that turns its output into (N, C, h, w).

    The one layer resolver: :func:`explain` and the trainer's attention penalty both call it,
    so a model is penalised and audited at the same layer. A one-image probe pass (eval mode,
    flags restored, cached per model and input shape) records every module's output; the
    reshape follows from the layer's layout by rule (see the module docstring) unless
    ``reshape`` is given. With ``target_layer=None`` the layer is the last module with a grid
    output of more than one position (adaptive pools and views skipped); for a token model
    with class or register tokens, the last one before the last attention (a ViT's last
    ``ln_1``).

    Returns:
        ``(dotted name, module, reshape or None)``.

    Raises:
        ConfigError: an unknown name or a module not in the model.
        ModelError: ``None`` and no module gives a grid output.
    """
    names = _module_names(model)
    if target_layer is None:
        name = _default_layer(_probe(model, images))
    elif isinstance(target_layer, nn.Module):
        if target_layer not in names:
            raise ConfigError(
                f"target_layer: the module {type(target_layer).__name__} is not part of the model"
            )
        name = names[target_layer]
    elif isinstance(target_layer, str):
        name = target_layer
    else:
        raise ConfigError(
            f"target_layer: expected a module, a dotted name or None, got "
            f"{type(target_layer).__name__}"
        )

    modules = dict(model.named_modules(remove_duplicate=False))
    if name not in modules or name == "":
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"target_layer: the model has no layer named {name!r}{hint}")

    if reshape is None:
        grid = _probe(model, images).grids.get(name)
        reshape = grid.reshape if grid is not None else None
    return name, modules[name], reshape


def layer_grid(model: nn.Module, target_layer: str, images: Tensor) -> Grid | None:
    """How ``target_layer``'s output is laid out for inputs shaped like ``images``, or None."""
    return _probe(model, images).grids.get(target_layer)


def to_grid(output: Tensor, reshape: Reshape | None, name: str) -> Tensor:
    """The layer output as (N, C, h, w), or ConfigError naming the layer and its shape."""
    grid = reshape(output) if reshape is not None else output
    if not isinstance(grid, Tensor) or grid.ndim != 4:
        shape = tuple(output.shape)
        raise ConfigError(
            f"target_layer {name!r}: output of shape {shape} is not spatial (N, C, h, w); "
            "pick a convolutional layer or pass reshape="
        )
    return grid


def layer_output(output: object, name: str) -> Tensor:
    """The target layer's output if it is a tensor, else ModelError naming what it is."""
    if isinstance(output, Tensor):
        return output
    kind = type(output).__name__
    raise ModelError(
        f"target_layer {name!r} returns a {kind}, not a tensor; pick a layer whose output is a "
        "tensor or a submodule inside it"
    )
