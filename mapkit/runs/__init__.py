"""The commands' runs: find inputs, take the store's lock, do the per-item work, write, report."""
