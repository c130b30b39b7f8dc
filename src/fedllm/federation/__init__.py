"""Running a federation: setup, modes, the loop, checkpoints, the run directory."""
