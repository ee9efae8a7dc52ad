"""claykiln."""
