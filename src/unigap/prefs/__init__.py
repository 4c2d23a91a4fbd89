"""Preference data for multi-task DPO on ShapeWorld: build pairs with exact scores, store and load them.

`build` samples and scores candidates (`und`, `gen-real`, `gen-model`), `scoring` holds the exact
scores, `rows` the on-disk row format (JSONL or Parquet, loadable with HF `datasets`) and its conversion
to the trainer's pairs, `kinds` the torch-free names the CLI needs.
"""
