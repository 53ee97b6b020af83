"""Small helpers every layer uses (standard library only)."""
