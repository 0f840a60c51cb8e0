"""The web session's own errors; the app answers each with its HTTP status (404, 409, 500)."""

from __future__ import annotations

from ..errors import RewriteError


class SessionBusy(RewriteError):
    """The model is busy with a running edit or another request (HTTP 409, code "busy")."""

    code = "busy"


class DuplicateEdit(RewriteError):
    """The edit is applied already; applying it again would count it twice (HTTP 409, code "duplicate")."""

    code = "duplicate"


class NotFound(RewriteError):
    """A saved edit, history entry or image that does not exist (HTTP 404)."""


class NameTaken(RewriteError):
    """Saving would overwrite an existing edit file without the overwrite flag (HTTP 409)."""


class StorageError(RewriteError):
    """A saved edit could not be written (permissions, full disk); nothing saved was changed (HTTP 500)."""
