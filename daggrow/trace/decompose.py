"""Plain-op forwards for torch.nn modules that torch.fx cannot trace through as written.

``nn.TransformerEncoderLayer.forward`` and ``nn.TransformerEncoder.forward`` choose between a
fused fast path and the plain one by looking at their inputs (``src.dim()``, masks, autocast),
which torch.fx cannot decide on a traced value. Their plain path is the sum of a few calls of
their own submodules; the tracer traces these functions instead, so that attention stays one
``nn.MultiheadAttention`` call (an op node) while the feed-forward Linear layers, the norms
and the residual sums become ordinary growable nodes and edges. The functions compute what
the modules compute outside the fast path (the fast path computes the same in eval mode).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn


def encoder_layer_forward(layer: nn.TransformerEncoderLayer, src: Tensor, src_mask: Tensor | None = None,
                          src_key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """``nn.TransformerEncoderLayer.forward`` without its fast path."""

    def attend(x: Tensor) -> Tensor:
        out = layer.self_attn(x, x, x, attn_mask=src_mask, key_padding_mask=src_key_padding_mask,
                              need_weights=False, is_causal=is_causal)[0]
        return layer.dropout1(out)

    def feed_forward(x: Tensor) -> Tensor:
        return layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(x)))))

    x = src
    if layer.norm_first:
        x = x + attend(layer.norm1(x))
        return x + feed_forward(layer.norm2(x))
    x = layer.norm1(x + attend(x))
    return layer.norm2(x + feed_forward(x))


def encoder_forward(encoder: nn.TransformerEncoder, src: Tensor, mask: Tensor | None = None,
                    src_key_padding_mask: Tensor | None = None, is_causal: bool | None = None) -> Tensor:
    """``nn.TransformerEncoder.forward`` without its fast path (no nested tensors)."""
    out = src
    for layer in encoder.layers:
        out = layer(out, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
    return encoder.norm(out) if encoder.norm is not None else out


DECOMPOSED: dict[type, Callable[..., Any]] = {
    nn.TransformerEncoderLayer: encoder_layer_forward,
    nn.TransformerEncoder: encoder_forward,
}
