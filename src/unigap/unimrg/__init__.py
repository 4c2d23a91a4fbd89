"""UniMRG (arXiv 2601.21406): understanding SFT with auxiliary generation of the input image's representations
(reconstruction, segmentation map, depth-like map), and its baseline, understanding SFT alone (`und-sft`)."""

from unigap.unimrg.config import OBJECTIVES, REPRESENTATIONS, UniMRGConfig
from unigap.unimrg.data import INSTRUCTIONS, UniMRGData, build_data
from unigap.unimrg.trainer import LOGGED_KEYS, UniMRGTrainer

__all__ = ["INSTRUCTIONS", "LOGGED_KEYS", "OBJECTIVES", "REPRESENTATIONS", "UniMRGConfig", "UniMRGData",
           "UniMRGTrainer", "build_data"]
