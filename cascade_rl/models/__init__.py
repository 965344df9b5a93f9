"""Load, save and build InternVL policies."""
