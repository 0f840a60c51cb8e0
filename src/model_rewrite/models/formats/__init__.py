"""Checkpoint formats, one module each: read a file of that format (executing nothing in it) and build one
of our networks from it. models/registry.py maps model names to these modules' loaders."""
