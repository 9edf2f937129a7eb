"""
Where the command line gets its servers, keys and base URL from: a TOML config file, or the
environment. Keys never come from an argument (they would land in shell history) and are
never echoed, not even in error messages.
"""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast, get_args
from urllib.parse import urlsplit

from attrs import frozen

from .. import (
    DEFAULT_BASE_URL,
    Client,
    CoordinationBackend,
    HealthPolicy,
    InvalidRequestError,
    PollPolicy,
    RetryPolicy,
    Routing,
    Server,
    ServerPool,
    Timeouts,
    Transport,
)

__all__ = [
    "BASE_URL_ENV",
    "KEYS_ENV",
    "REDIS_URL_ENV",
    "Settings",
    "check_base_url",
    "load_settings",
    "redis_url_of",
]

KEYS_ENV = "MODELSLAB_API_KEYS"
BASE_URL_ENV = "MODELSLAB_BASE_URL"
REDIS_URL_ENV = "MODELSLAB_REDIS_URL"

_SERVER_FIELDS = frozenset({"name", "key", "key_env", "max_concurrency"})
_TOP_FIELDS = frozenset({"servers", "base_url", "routing", "redis_url"})
_NO_KEYS = (
    f"no API keys: set {KEYS_ENV} (comma-separated, the first server first) "
    "or pass --config FILE with [[servers]] entries (key or key_env)"
)


@frozen(kw_only=True)
class Settings:
    """
    How to reach the API: the servers (with their keys), the base URL and the routing mode,
    plus optional policies (the demo tunes them; the defaults suit real servers).
    """

    servers: tuple[Server, ...]
    base_url: str
    routing: Routing
    retry: RetryPolicy | None = None
    health: HealthPolicy | None = None
    poll: PollPolicy | None = None
    timeouts: Timeouts | None = None
    redis_url: str | None = None  #: share the pool's state through this Redis (never shown)

    def client(
        self, *, backend: CoordinationBackend | None = None, transport: Transport | None = None
    ) -> Client:
        """A new, unopened client for these settings (its pool on ``backend`` if given)."""
        pool = ServerPool(self.servers, routing=self.routing, health=self.health, backend=backend)
        return Client(
            pool,
            base_url=self.base_url,
            retry=self.retry,
            poll=self.poll,
            timeouts=self.timeouts,
            transport=transport,
        )


def load_settings(
    *,
    config: Path | None,
    base_url: str | None,
    routing: str | None,
    environ: Mapping[str, str] | None = None,
    job_timeout: float | None = None,
    redis: str | None = None,
) -> Settings:
    """
    Resolve the settings: ``--config`` if given, else ``MODELSLAB_API_KEYS``; command-line
    options override the file, which overrides ``MODELSLAB_BASE_URL``.

    Raises:
        InvalidRequestError: No keys, or a config file that cannot be read or is invalid.
    """
    env = os.environ if environ is None else environ
    table: dict[str, Any] = {}
    if config is not None:
        table = _read_config(config)
        servers = _servers_from_config(table, env)
    else:
        servers = _servers_from_env(env)
    chosen_routing = routing or table.get("routing") or "first-server"
    if chosen_routing not in get_args(Routing):
        raise InvalidRequestError(
            "routing",
            f"{chosen_routing!r} is not a routing mode",
            allowed=", ".join(get_args(Routing)),
        )
    url = check_base_url(
        base_url or table.get("base_url") or env.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    )
    names = [server.name for server in servers]
    if len(set(names)) != len(names):
        raise InvalidRequestError("servers", "server names must be unique")
    if len({server.key for server in servers}) != len(servers):
        raise InvalidRequestError("servers", "the same key is listed twice")
    return Settings(
        servers=tuple(servers),
        base_url=url,
        routing=cast(Routing, chosen_routing),
        timeouts=None if job_timeout is None else Timeouts(job=job_timeout),
        redis_url=_redis_url(redis, table, env),
    )


def redis_url_of(
    *, config: Path | None, redis: str | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """
    The Redis URL: ``--redis``, else ``MODELSLAB_REDIS_URL``, else the config's ``redis_url``
    (the config is read for it alone: no keys are needed).

    Raises:
        InvalidRequestError: The config cannot be read, or the URL is not a Redis URL.
    """
    env = os.environ if environ is None else environ
    table = _read_config(config) if config is not None and redis is None else {}
    return _redis_url(redis, table, env)


def _redis_url(redis: str | None, table: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    url = redis or env.get(REDIS_URL_ENV) or table.get("redis_url")
    if url is None:
        return None
    allowed = "redis://host:port/db, rediss://... or unix:///path"
    if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        # Never the URL itself in the message: it may hold a password.
        raise InvalidRequestError("redis", "not a Redis URL", allowed=allowed)
    return url


def check_base_url(url: Any) -> str:
    """
    ``url`` when it is an http(s) URL with a host (and a valid port, no user:password part).

    Raises:
        InvalidRequestError: Anything else (exit status 2: nothing runs).
    """
    allowed = "an http(s) URL with a host, e.g. https://modelslab.com/api/v1/enterprise"
    if not isinstance(url, str):
        raise InvalidRequestError("base_url", f"must be a string, got {type(url).__name__}")
    shown = repr(url[:80])
    if not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidRequestError("base_url", f"{shown} holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequestError(
            "base_url", f"{shown} is not a valid URL", allowed=allowed
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError("base_url", f"{shown} is not an http(s) URL", allowed=allowed)
    if port == 0:
        raise InvalidRequestError("base_url", f"{shown} names port 0", allowed=allowed)
    if parts.username is not None or parts.password is not None:
        raise InvalidRequestError(
            "base_url", "must not hold a user name or password", allowed=allowed
        )
    return url


def _servers_from_env(env: Mapping[str, str]) -> list[Server]:
    keys = [key.strip() for key in env.get(KEYS_ENV, "").split(",") if key.strip()]
    if not keys:
        raise InvalidRequestError(KEYS_ENV, _NO_KEYS)
    return [Server(key=key, name=f"server-{n}") for n, key in enumerate(keys, start=1)]


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InvalidRequestError("--config", f"cannot read {path}: {error.strerror}") from None
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        # tomllib's messages give a position, never the text around it.
        raise InvalidRequestError("--config", f"{path} is not valid TOML: {error}") from None
    unknown = sorted(set(table) - _TOP_FIELDS)
    if unknown:
        raise InvalidRequestError(
            "--config",
            f"unknown setting(s) {', '.join(unknown)}",
            allowed=", ".join(sorted(_TOP_FIELDS)),
        )
    _warn_if_readable(path, table)
    return table


def _warn_if_readable(path: Path, table: dict[str, Any]) -> None:
    servers = table.get("servers")
    holds_keys = isinstance(servers, list) and any(
        isinstance(s, dict) and "key" in s for s in servers
    )
    if holds_keys and os.name == "posix" and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        print(
            f"modelslab-async: warning: {path} holds API keys and is readable by other users "
            f"(chmod 600 {path}, or use key_env)",
            file=sys.stderr,
        )


def _servers_from_config(table: dict[str, Any], env: Mapping[str, str]) -> list[Server]:
    entries = table.get("servers")
    if not isinstance(entries, list) or not entries:
        raise InvalidRequestError("servers", _NO_KEYS)
    servers = []
    for n, entry in enumerate(entries, start=1):
        where = f"servers[{n}]"
        if not isinstance(entry, dict):
            raise InvalidRequestError(where, "must be a table ([[servers]])")
        unknown = sorted(set(entry) - _SERVER_FIELDS)
        if unknown:
            raise InvalidRequestError(
                where,
                f"unknown field(s) {', '.join(unknown)}",
                allowed=", ".join(sorted(_SERVER_FIELDS)),
            )
        name = entry.get("name", f"server-{n}")
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequestError(f"{where}.name", "must be a non-empty string")
        capacity = entry.get("max_concurrency", 2)
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InvalidRequestError(f"{where}.max_concurrency", "must be an integer >= 1")
        servers.append(Server(key=_key_of(entry, where, env), name=name, max_concurrency=capacity))
    return servers


def _key_of(entry: dict[str, Any], where: str, env: Mapping[str, str]) -> str:
    if ("key" in entry) == ("key_env" in entry):
        raise InvalidRequestError(where, "give exactly one of key and key_env")
    if "key" in entry:
        key = entry["key"]
        if not isinstance(key, str) or not key.strip():
            raise InvalidRequestError(f"{where}.key", "must be a non-empty string")
        return key.strip()
    variable = entry["key_env"]
    if not isinstance(variable, str) or not variable:
        raise InvalidRequestError(f"{where}.key_env", "must name an environment variable")
    key = env.get(variable, "").strip()
    if not key:
        raise InvalidRequestError(
            f"{where}.key_env", f"the environment variable {variable} is not set"
        )
    return key
