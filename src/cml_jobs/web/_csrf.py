"""CSRF protection for the dashboard's forms: a signed double-submit token.

A page sets a cookie holding ``nonce.signature`` (HMAC-SHA256 of the nonce under the
dashboard's secret) and puts the same token in each form. A POST is accepted only when
the form's token equals the cookie's and the signature is the dashboard's: another site
can make a browser send the cookie, but cannot read it to copy it into the form, and
cannot make a token of its own without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["COOKIE", "FIELD", "CsrfTokens"]

COOKIE = "cml_jobs_csrf"
FIELD = "csrf_token"


class CsrfTokens:
    """Makes and checks tokens under one secret.

    Args:
        secret: the signing key; a random one (valid until the process restarts) if None.
    """

    def __init__(self, secret: str | bytes | None = None) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        self._secret = secret or secrets.token_bytes(32)

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()

    def new(self) -> str:
        """A fresh token."""
        nonce = secrets.token_urlsafe(24)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` was made under this secret."""
        if not token or "." not in token:
            return False
        nonce, _, signature = token.partition(".")
        return hmac.compare_digest(signature, self._sign(nonce))

    def accepts(self, cookie: str | None, submitted: str | None) -> bool:
        """Whether a POST carrying this cookie and this form token may go ahead."""
        if not cookie or not submitted or not self.valid(cookie):
            return False
        return hmac.compare_digest(cookie, submitted)
