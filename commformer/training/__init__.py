"""The training loop: rollout collection, PPO and the bi-level schedule, the trainer, evaluation, checkpoints and
the logger."""
