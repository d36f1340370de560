"""The server's defences: a token every session must present, and no plain-text listening on a public address.

The token comes from ``--token-file`` or is made at start (printed once); a request proves it with
``Authorization: Bearer <token>``, compared in constant time. ``check_bind`` refuses an address other machines
can reach unless TLS is set up (``--cert`` and ``--key``) or the user says ``--insecure``.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from pathlib import Path

MIN_TOKEN_CHARS = 16


class SecurityError(ValueError):
    """A setting that would leave the server open; the text says what to do."""


def new_token() -> str:
    return secrets.token_urlsafe(32)


def read_token(path: str | Path) -> str:
    """The first line of ``path``; too short a token is refused (it would be guessed)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError) as exc:
        raise SecurityError(f"cannot read a token from {path}: {exc}") from None
    if len(token) < MIN_TOKEN_CHARS:
        raise SecurityError(f"the token in {path} has {len(token)} characters; use at least {MIN_TOKEN_CHARS}")
    return token


def token_accepted(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (``Bearer <token>``)."""
    if not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[len("Bearer "):].strip().encode(), token.encode())


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only reaches this machine."""
    if host == "localhost":
        return True
    if not host:  # every interface
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def check_bind(host: str, cert: str | None, key: str | None, insecure: bool) -> None:
    """Refuse to listen where others can connect without TLS, unless ``insecure``; TLS needs both files."""
    if bool(cert) != bool(key):
        raise SecurityError("TLS needs both --cert and --key")
    if is_loopback(host) or (cert and key) or insecure:
        return
    raise SecurityError(f"{host} can be reached from other machines: give --cert and --key for TLS, or --insecure "
                        "to send the token and the video unencrypted (only on a network you trust)")
