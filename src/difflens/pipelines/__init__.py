"""One module per command: a frozen Config, its steps, and run_X that keeps OUT/summary.json."""
