"""Runner, store, metrics, leaderboards and plots."""
