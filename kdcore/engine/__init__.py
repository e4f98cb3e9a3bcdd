"""The training engine: batches, optimisation, checkpoints, the loop, and whole runs."""
