"""Metrics logging, progress display and the end-of-run report."""
