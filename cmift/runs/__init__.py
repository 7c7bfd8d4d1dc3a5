"""Run directories: files and atomic writes, claiming a directory, the record, the manifest,
logs, predictions, and sweeps."""
