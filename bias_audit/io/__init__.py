"""Files: manifests to datasets, checkpoints, and the run folder (the only reader and writer of a
run's files)."""
