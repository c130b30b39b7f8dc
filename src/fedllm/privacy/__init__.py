"""Privacy: differential-privacy accounting (dp-accounting) for user-level DP-FedAvg."""
