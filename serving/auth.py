"""Who may write: bearer tokens of app users, and a limit on how fast.

Sign-up issues a token (``secrets.token_urlsafe``, 256 bits) that the API shows
once; the warehouse keeps only its SHA-256 (``app.tokens``). A rating is stored
through ``app.submit_rating_as``, which writes for the token's own user, so
the API cannot write for anyone else even by mistake; the API also answers 403
when the path names another user. A user who signed up with a token has a
private history: reading it needs the token too. The release's own users have
no tokens and cannot be written as.

Writes are limited per token and per client address (a sliding minute, per API
worker), with 429 and ``Retry-After``.
"""

from __future__ import annotations

import collections
import hashlib
import secrets
import time

from fastapi import HTTPException, Request

from serving import db

BEARER = {"WWW-Authenticate": "Bearer"}


def new_token() -> tuple[str, str]:
    """A fresh token and the hash the warehouse stores."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_hash(request: Request) -> str | None:
    """The hash of the request's ``Authorization: Bearer`` token, if it has one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token_hash(token.strip())


async def require_owner(conn, request: Request, user_id: int) -> str:
    """The request's token hash, if it belongs to ``user_id``; else 401 or 403."""
    hashed = bearer_hash(request)
    if hashed is None:
        raise HTTPException(401, f"user {user_id}: this needs the user's token "
                                 "(Authorization: Bearer <token from sign-up>)", headers=BEARER)
    owner = await conn.fetchval(db.TOKEN_USER, hashed)
    if owner is None:
        raise HTTPException(401, "invalid or revoked token", headers=BEARER)
    if owner != user_id:
        raise HTTPException(403, f"this token belongs to user {owner}, not user {user_id}")
    return hashed


class RateLimiter:
    """At most ``per_minute`` events per key in any sliding minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.events: dict[str, collections.deque] = collections.defaultdict(collections.deque)

    def check(self, *keys: str) -> None:
        """Count one event for every key, or raise 429 if any key is over its limit."""
        now = time.monotonic()
        waits = []
        for key in keys:
            events = self.events[key]
            while events and now - events[0] >= 60:
                events.popleft()
            if len(events) >= self.per_minute:
                waits.append(60 - (now - events[0]))
        if waits:
            wait = max(1, int(max(waits) + 0.999))
            raise HTTPException(429, f"too many writes: at most {self.per_minute} a minute; "
                                     f"try again in {wait} s", headers={"Retry-After": str(wait)})
        for key in keys:
            self.events[key].append(now)
        if len(self.events) > 100_000:  # forget idle keys
            for key in [k for k, v in self.events.items() if not v or now - v[-1] >= 60]:
                del self.events[key]


def client_address(request: Request) -> str:
    return f"ip:{request.client.host if request.client else 'unknown'}"
