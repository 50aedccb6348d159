"""Data source components."""
