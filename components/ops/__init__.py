"""Parameter-free operations."""
