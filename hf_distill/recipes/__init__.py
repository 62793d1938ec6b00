"""End-to-end jobs, importable so that the CLI can run them."""
