"""The unified model: Janus (transformers) wrapped for understanding, generation, scoring and LoRA."""

from unigap.model.janus_pro_shaped import save_random_janus_pro
from unigap.model.loading import load_model
from unigap.model.tiny import save_random_tiny, save_tiny, tiny_janus_config
from unigap.model.tokenizer import build_word_tokenizer
from unigap.model.unified import UnifiedModel

__all__ = ["UnifiedModel", "build_word_tokenizer", "load_model", "save_random_janus_pro", "save_random_tiny", "save_tiny", "tiny_janus_config"]
