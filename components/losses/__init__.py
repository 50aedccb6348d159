"""Loss components."""
