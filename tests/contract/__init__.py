"""Contract-test helpers and fixtures: the docs' own examples and a standalone fake runner."""
