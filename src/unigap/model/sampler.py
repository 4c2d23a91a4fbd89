"""The decoding loop behind every image-token producer: a static KV cache and one step per token.

Why not transformers' forward per step: for a small model most of a step is overhead, not arithmetic — the
cache grows by concatenation (every step copies it), an attention mask is rebuilt from the 2-D mask, and each
call walks kwargs and output dataclasses. Here the prompt (prefix) runs once through the language model as
usual; its keys and values go into buffers sized for the whole image, and each new token runs the same modules
(`input_layernorm`, `q/k/v/o_proj`, rotary embedding, SDPA, `post_attention_layernorm`, `mlp`, `norm` — LoRA
layers included, since the modules are called) against the buffers, with a key mask that marks real
positions. A Llama decoder layer computes exactly this; a test checks the greedy tokens against
transformers' own image `generate`.

Rows: with classifier-free guidance the batch holds the conditional rows, then their unconditional twins, and
one forward pass serves both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import JanusForConditionalGeneration
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


@dataclass
class StaticCache:
    """Per-layer key and value buffers [R, H_kv, L, D] and which of the L positions hold a real token."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor  # [R, L] bool

    @classmethod
    def from_prefill(cls, dynamic: object, mask: torch.Tensor, extra: int) -> StaticCache:
        """Buffers holding a prefilled transformers cache (`.layers[i].keys/.values`) and room for `extra` tokens."""
        keys, values = [], []
        for layer in dynamic.layers:
            rows, heads, length, dim = layer.keys.shape
            k = layer.keys.new_zeros((rows, heads, length + extra, dim))
            v = layer.values.new_zeros((rows, heads, length + extra, dim))
            k[:, :, :length], v[:, :, :length] = layer.keys, layer.values
            keys.append(k)
            values.append(v)
        valid = torch.zeros((mask.shape[0], mask.shape[1] + extra), dtype=torch.bool, device=mask.device)
        valid[:, : mask.shape[1]] = mask.bool()
        return cls(keys, values, valid)


def decode_step(
    model: JanusForConditionalGeneration, embeds: torch.Tensor, position: torch.Tensor, cache: StaticCache, slot: int
) -> torch.Tensor:
    """Run one new token per row (`embeds` [R, 1, D], position ids [R]) into cache slot `slot`; the final
    hidden state [R, D]."""
    lm = model.model.language_model
    cache.valid.narrow(1, slot, 1).fill_(True)  # (narrow, not [:, slot]: a compiled step keeps the slot symbolic)
    seen = slot + 1  # attend to the filled positions only: the empty tail would cost attention time and add nothing
    attend = cache.valid[:, None, None, :seen]  # [R, 1, 1, seen]
    hidden = embeds
    cos, sin = lm.rotary_emb(hidden, position[:, None])
    for index, layer in enumerate(lm.layers):
        attention = layer.self_attn
        normed = layer.input_layernorm(hidden)
        shape = (hidden.shape[0], 1, -1, attention.head_dim)
        query = attention.q_proj(normed).view(shape).transpose(1, 2)
        key = attention.k_proj(normed).view(shape).transpose(1, 2)
        value = attention.v_proj(normed).view(shape).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        cache.keys[index].narrow(2, slot, 1).copy_(key)
        cache.values[index].narrow(2, slot, 1).copy_(value)
        out = F.scaled_dot_product_attention(
            query, cache.keys[index][:, :, :seen], cache.values[index][:, :, :seen], attn_mask=attend,
            scale=attention.scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )
        hidden = hidden + attention.o_proj(out.transpose(1, 2).reshape(hidden.shape[0], 1, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return lm.norm(hidden)[:, -1]
