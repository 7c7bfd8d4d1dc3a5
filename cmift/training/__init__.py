"""Training: one run (run.py), the loop and its state, evaluation, checkpoints, teachers."""
