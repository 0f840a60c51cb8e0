"""Errors raised by model_rewrite; each message names the problem and how to fix it."""

from __future__ import annotations


class RewriteError(Exception):
    """Base class of every error this package raises on purpose."""


class LayerNotFound(RewriteError):
    """The named layer does not exist or cannot be edited."""


class ModelLoadError(RewriteError):
    """A model name or checkpoint could not be loaded."""


class IncompatibleEdit(RewriteError):
    """An edit was made for another model, layer or format version."""


class InvalidEdit(RewriteError):
    """An edit file or request is malformed (bad JSON, bad mask, unknown keys...)."""


class CorruptCache(RewriteError):
    """A cached file is unreadable or does not match what it claims to hold."""


class SolveError(RewriteError):
    """The update could not be solved (non-finite result, empty selection...)."""


class ExportError(RewriteError):
    """An export was refused: a format the model cannot be written in, or an output that would overwrite the input."""
