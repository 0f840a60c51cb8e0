"""Checkpoint formats, one module each: read a file of that format (executing nothing in it) and build one
of our networks from it, and write an edited network back into a copy of such a file (NVIDIA's writer is
the sibling module nvidia_writer). models/registry.py maps model names to these modules' loaders;
model_rewrite.export maps formats to their writers."""
