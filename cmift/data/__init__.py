"""Data: the GLUE task registry and loading (tasks.py), tokenised splits and batching
(tokenized.py), and the GLUE metrics (metrics.py)."""
