"""The error raised when the coordination store cannot be used."""

from __future__ import annotations

from .._errors import ModelsLabError

__all__ = ["BackendUnavailableError"]


class BackendUnavailableError(ModelsLabError):
    """
    Redis could not be reached, or did not answer in time, and the backend fails closed.

    Raised only with ``on_unavailable="fail"`` (the default). Nothing was granted and nothing
    was sent to any ModelsLab server, so the call can be retried once Redis answers again.
    redis-py's own error is the ``__cause__``. With ``on_unavailable="local-share"`` the
    backend falls back to a share of each server's capacity instead of raising.
    """
