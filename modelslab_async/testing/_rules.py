"""Account-wide rules of the fake: the credit balance and which image URLs cannot be fetched.

The fake never fetches an ``init_image``. Instead a URL counts as unreachable when its host is
under the reserved ``.invalid`` top-level domain (RFC 2606: it never resolves), when its host is
registered (``unreachable.example.com`` also covers its subdomains), or when it starts with a
registered URL prefix. Such a submit is answered "Unable to fetch image from provided URL".
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["Account", "ImageSources", "check_balance"]

_RESERVED_TLD = ".invalid"


class ImageSources:
    """Decides, without any network access, whether an image URL could be fetched."""

    __slots__ = ("_entries",)

    def __init__(self, unreachable: Iterable[str] = ()) -> None:
        self._entries: list[str] = []
        for entry in unreachable:
            self.add(entry)

    def add(self, entry: str) -> None:
        """Register a host name or a URL prefix as unreachable.

        Raises:
            ValueError: ``entry`` is empty.
        """
        entry = entry.strip()
        if not entry:
            raise ValueError("an unreachable source must be a host name or a URL prefix")
        self._entries.append(entry if "://" in entry else entry.lower().rstrip("."))

    def clear(self) -> None:
        """Forget the registered hosts and prefixes (``.invalid`` stays unreachable)."""
        self._entries.clear()

    @property
    def entries(self) -> list[str]:
        """The registered hosts and URL prefixes."""
        return list(self._entries)

    def reachable(self, url: str) -> bool:
        """Return whether the fake pretends it could download ``url``."""
        host = (urlsplit(url).hostname or "").rstrip(".")
        if host == _RESERVED_TLD[1:] or host.endswith(_RESERVED_TLD):
            return False
        for entry in self._entries:
            if "://" in entry:
                if url.startswith(entry):
                    return False
            elif host == entry or host.endswith(f".{entry}"):
                return False
        return True


class Account:
    """The account's credit balance, counted in generated images; None is unlimited."""

    __slots__ = ("balance",)

    def __init__(self, balance: int | None = None) -> None:
        self.balance = check_balance(balance)

    def charge(self, images: int) -> bool:
        """Take ``images`` credits; return False (and take nothing) if the balance is short."""
        if self.balance is None:
            return True
        if self.balance < images:
            return False
        self.balance -= images
        return True


def check_balance(balance: int | None) -> int | None:
    """Return ``balance`` if it is None or a non-negative int.

    Raises:
        ValueError: Otherwise.
    """
    if balance is not None and (type(balance) is not int or balance < 0):
        raise ValueError(f"balance must be None or a non-negative integer, got {balance!r}")
    return balance
