"""The decoding loop behind every image-token producer: a static KV cache and one step per token.

Why not transformers' forward per step: for a small model most of a step is overhead, not arithmetic — the
cache grows by concatenation (every step copies it), an attention mask is rebuilt from the 2-D mask, and each
call walks kwargs and output dataclasses. Here the prompt (prefix) runs once through the language model as
usual; its keys and values go into buffers sized for the whole image, and each new token runs the same modules
(`input_layernorm`, `q/k/v/o_proj`, rotary embedding, SDPA, `post_attention_layernorm`, `mlp`, `norm` — LoRA
layers included, since the modules are called) against the buffers, with a key mask that marks real
positions. A Llama decoder layer computes exactly this; a test checks the greedy tokens against
transformers' own image `generate`.

Rows: with classifier-free guidance the batch holds the conditional rows, then their unconditional twins (editing's
guidance adds a third group), and one forward pass serves them all.

On CUDA the step (image-token embedding, the layers, the generation head) is captured once per sampling call as a
CUDA graph and replayed for every token: at the batch sizes sampling runs at, a step of a 1B model is hundreds of
small kernels whose launches cost more than their arithmetic, and a replay is one launch. A graph needs fixed
shapes, so the captured step writes its slot at a tensor index and attends over the whole buffer (the key mask
hides the empty tail): the same arithmetic up to float rounding, so in bf16 a near-tie can go the other way and
the same seed can give other tokens than the eager step. `UNIGAP_CUDA_GRAPHS=0` samples eagerly, as unigap did
before graphs.
"""

from __future__ import annotations

import os
import warnings
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
    model: JanusForConditionalGeneration,
    embeds: torch.Tensor,
    position: torch.Tensor,
    cache: StaticCache,
    slot: int | torch.Tensor,
) -> torch.Tensor:
    """Run one new token per row (`embeds` [R, 1, D], position ids [R]) into cache slot `slot`; the final
    hidden state [R, D]. An int slot attends to the filled positions only (the empty tail would cost attention
    time and add nothing); a one-element tensor slot is the fixed-shape step a CUDA graph replays."""
    lm = model.model.language_model
    if isinstance(slot, torch.Tensor):
        cache.valid.index_fill_(1, slot, True)
        seen = cache.valid.shape[1]

        # (cast: index_copy_ does not, as copy_ does, and under autocast a step's keys are bf16 where an fp32
        # prefill made the cache float32)
        def store(buffer: torch.Tensor, new: torch.Tensor) -> None:
            buffer.index_copy_(2, slot, new.to(buffer.dtype))
    else:
        cache.valid.narrow(1, slot, 1).fill_(True)  # (narrow, not [:, slot]: a compiled step keeps the slot symbolic)
        seen = slot + 1

        def store(buffer: torch.Tensor, new: torch.Tensor) -> None:
            buffer.narrow(2, slot, 1).copy_(new)

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
        store(cache.keys[index], key)
        store(cache.values[index], value)
        out = F.scaled_dot_product_attention(
            query, cache.keys[index][:, :, :seen], cache.values[index][:, :, :seen], attn_mask=attend,
            scale=attention.scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )
        hidden = hidden + attention.o_proj(out.transpose(1, 2).reshape(hidden.shape[0], 1, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return lm.norm(hidden)[:, -1]


def image_step(
    model: JanusForConditionalGeneration,
    tokens: torch.LongTensor,
    position: torch.Tensor,
    cache: StaticCache,
    slot: int | torch.Tensor,
) -> torch.Tensor:
    """Feed image tokens [R] at cache slot `slot`: the next generation-head logits [R, V], in fp32."""
    embeds = model.prepare_embeddings_for_image_generation(tokens.unsqueeze(-1))
    return model.model.generation_head(decode_step(model, embeds, position, cache, slot)).float()


def cuda_graphs_enabled(device: torch.device) -> bool:
    """Whether sampling on `device` replays CUDA graphs by default (CUDA, unless `UNIGAP_CUDA_GRAPHS=0`)."""
    return device.type == "cuda" and os.environ.get("UNIGAP_CUDA_GRAPHS", "1") != "0"


class GraphedStep:
    """`image_step` with a tensor slot (fixed shapes), captured as a CUDA graph at the first call and replayed
    after when `capture`; otherwise run eagerly (on a CPU, where the tests check it against the growing-length
    step). A capture that fails warns and falls back to the eager fixed-shape step. The logits a call returns are
    the graph's output buffer: the next call overwrites them. Capturing costs a warm-up step and a synchronisation
    per sampling call."""

    def __init__(self, model: JanusForConditionalGeneration, cache: StaticCache, capture: bool) -> None:
        self.model, self.cache, self.capture = model, cache, capture
        self.device = cache.valid.device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.tokens: torch.Tensor | None = None  # the graph's input and output buffers, set by the capture
        self.position: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        # The last slot: the warm-up's write lands where only the final step writes.
        self.slot = torch.full((1,), cache.valid.shape[1] - 1, dtype=torch.long, device=self.device)

    def __call__(self, tokens: torch.LongTensor, position: torch.Tensor, slot: int) -> torch.Tensor:
        if self.capture and self.graph is None:
            self._capture(tokens, position)
        if self.graph is None:
            self.slot.fill_(slot)
            return image_step(self.model, tokens, position, self.cache, self.slot)
        self.tokens.copy_(tokens)
        self.position.copy_(position)
        self.slot.fill_(slot)
        with torch.cuda.device(self.device):
            self.graph.replay()
        return self.logits

    def _capture(self, tokens: torch.LongTensor, position: torch.Tensor) -> None:
        self.capture = False
        self.tokens, self.position = tokens.clone(), position.clone()
        try:
            # On the model's device, with a stream made there: the current device may be another GPU.
            with torch.cuda.device(self.device):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up outside the capture: lazy initialisation, kernel choice
                    image_step(self.model, self.tokens, self.position, self.cache, self.slot)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=side):
                    self.logits = image_step(self.model, self.tokens, self.position, self.cache, self.slot)
            self.graph = graph
        except RuntimeError as error:  # an op that cannot be captured: sample eagerly rather than fail
            warnings.warn(f"CUDA graph capture failed, sampling eagerly: {error}", RuntimeWarning, stacklevel=3)
        self.cache.valid.narrow(1, self.cache.valid.shape[1] - 1, 1).fill_(False)  # the warm-up's write is not a token
