"""Multi-task DPO on the shared LoRA, and the post-hoc methods.

`dpo` (pairs, loss, one task's loss on a model — the stable core the diagnostics import), `config`
(`TrainConfig`), `strategies` (how two task gradients become one update), `trainer` (`DPOTrainer`),
`checkpoint` (atomic, resumable state), `merge` (rewarded soups exact on ΔW), `oracle` (separate-LoRA
routing), `names` (torch-free names for the CLI). Submodules are imported directly
(`from unigap.train.dpo import task_dpo_loss`), so importing the loss core does not pull in the trainer.
"""
