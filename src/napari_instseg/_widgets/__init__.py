"""Thin dock widgets: read layers, run the core engine in a thread, add layers."""
