"""The separate-LoRA oracle (SPEC §1 post-hoc method b): two adapters on one base model, routed by task.

Why: it bounds what any single shared adapter could reach — understanding calls run the und-only
adapter and generation calls the gen-only adapter. It is not one deployable model (two adapters, chosen by
task), so it is reported as an upper bound, not as a method.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from unigap.model.unified import UnifiedModel

UND_ADAPTER = "default"  # the name `UnifiedModel.load_adapter` gives
GEN_ADAPTER = "gen"
# every method of `UnifiedModel` that runs the LLM, by task (a test holds each new method to one of these sets)
UNDERSTANDING_CALLS = frozenset({"answer", "sample_answers", "answer_logprobs", "answer_token_logprobs",
                                 "grouped_answer_logprobs", "judge", "judge_generate", "reflect"})
GENERATION_CALLS = frozenset({"generate_images", "edit", "image_logprobs", "image_token_logprobs",
                              "edit_token_logprobs"})
# and those that do not: the VQ's, and the adapters' bookkeeping (the wrapped model's, unrouted)
UNROUTED_CALLS = frozenset({"encode_images", "decode_tokens", "save", "add_lora", "load_adapter", "fingerprint",
                            "save_adapter", "adapters_disabled", "shared_lora_parameters", "trainable_parameters"})


class SeparateLoraOracle:
    """A `UnifiedModel` stand-in: understanding methods use the und adapter, generation methods the gen one.

    Every other attribute (encode_images, decode_tokens, prompts, ...) is the wrapped model's.
    """

    def __init__(self, um: UnifiedModel, und_adapter: str | os.PathLike, gen_adapter: str | os.PathLike) -> None:
        um.load_adapter(und_adapter)
        um.peft.load_adapter(str(gen_adapter), adapter_name=GEN_ADAPTER)
        um.peft.set_adapter(UND_ADAPTER, inference_mode=True)
        self.um = um

    @contextlib.contextmanager
    def adapter(self, name: str) -> Iterator[UnifiedModel]:
        """Run the block with one adapter active (the und adapter is active otherwise)."""
        self.um.peft.set_adapter(name, inference_mode=True)
        try:
            yield self.um
        finally:
            self.um.peft.set_adapter(UND_ADAPTER, inference_mode=True)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.um, name)
        if name not in UNDERSTANDING_CALLS | GENERATION_CALLS:
            return attribute
        adapter = UND_ADAPTER if name in UNDERSTANDING_CALLS else GEN_ADAPTER
        return self._routed(attribute, adapter)

    def _routed(self, method: Callable[..., Any], adapter: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with self.adapter(adapter):
                return method(*args, **kwargs)

        return call
