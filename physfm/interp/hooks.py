"""Named hook points on the physics transformer, for probing (capture) and steering (add_to).

The model file knows nothing of probing: these helpers register ordinary forward hooks on its stable
module names from outside. Hook points::

    embedding          tok_embedding output              [B, L, d]   (frame tokens only)
    blocks.{i}.resid   residual stream after block i     [B, n_cond + L, d]
    blocks.{i}.attn_out  attention output of block i     [B, n_cond + L, d]   (before the residual add)
    blocks.{i}.mlp_out   MLP output of block i           [B, n_cond + L, d]   (before the residual add)

Block-level points include the ``model.n_cond_tokens`` leading conditioning positions. During cached
generation every call sees one token (L = 1). ``model.current_positions`` [L_chunk, 1 +
n_spatial_dims] holds each position's (t, x, y, z) (t = -1 for conditioning tokens) so an
intervention can depend on where a token sits in the grid.

Example::

    with capture(model, ["blocks.2.resid"]) as acts:
        model(idx, (16, 16), dataset_ids)
    h = acts["blocks.2.resid"][0]                      # [B, n_cond + L, d]
    with add_to(model, "blocks.2.resid", lambda h, pos: alpha * direction):
        frames = model.generate_frames(context, 4, dataset_ids)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from data_pipelines.errors import UnknownNameError


def hook_points(model: nn.Module) -> dict[str, nn.Module]:
    """Every hook point name -> the module whose forward output it is."""
    points: dict[str, nn.Module] = {"embedding": model.tok_embedding}
    for i, block in enumerate(model.blocks):
        points[f"blocks.{i}.resid"] = block
        points[f"blocks.{i}.attn_out"] = block.attn
        points[f"blocks.{i}.mlp_out"] = block.mlp
    return points


def _resolve(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    points = hook_points(model)
    unknown = [n for n in names if n not in points]
    if unknown:
        n_layer = len(model.blocks)
        raise UnknownNameError(
            f"unknown hook point {unknown[0]!r}: expected 'embedding' or "
            f"'blocks.{{i}}.resid|attn_out|mlp_out' with 0 <= i < {n_layer}"
        )
    return {n: points[n] for n in names}


@contextmanager
def capture(
    model: nn.Module,
    names: list[str],
    transform: Callable[[Tensor], Tensor] | None = None,
    device: str | None = "cpu",
) -> Iterator[dict[str, list[Tensor]]]:
    """Record the outputs at ``names`` while the block runs: name -> one tensor per forward call.

    ``transform`` (e.g. mean-pooling over positions) is applied before storing, which bounds memory
    when streaming many batches; stored tensors are detached and moved to ``device`` (None: leave in
    place)."""
    store: dict[str, list[Tensor]] = {name: [] for name in names}
    handles = []
    for name, module in _resolve(model, names).items():

        def hook(_module, _inputs, output, name=name):
            out = output.detach()
            out = transform(out) if transform is not None else out
            store[name].append(out.to(device) if device is not None else out)

        handles.append(module.register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def add_to(
    model: nn.Module, name: str, fn: Callable[[Tensor, Tensor | None], Tensor]
) -> Iterator[None]:
    """Intervene at hook point ``name``: its output h becomes h + fn(h, positions) for every call.

    ``positions`` is ``model.current_positions`` for the chunk being processed, [L_out, 1 +
    n_spatial_dims] (at 'embedding' only the frame tokens' rows); fn must return something
    broadcastable to h."""
    module = _resolve(model, [name])[name]

    def hook(_module, _inputs, output):
        positions = model.current_positions
        if name == "embedding" and positions is not None:
            # frame tokens: after the cond ones
            positions = positions[positions.shape[0] - output.shape[1] :]
        delta = fn(
            output, positions
        )  # in the model's dtype: a float32 direction must not promote a bf16 stream
        return output + (delta.to(output.dtype) if isinstance(delta, Tensor) else delta)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
