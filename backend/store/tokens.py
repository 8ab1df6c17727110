"""Bearer tokens: random, shown once, stored as SHA-256 (a 256-bit random token needs no slow hash)."""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from .tables import Token, utcnow

PREFIX = "ssah_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, name: str, *, scope: str = "write", run_id: str | None = None,
                 expires_at: datetime | None = None) -> tuple[Token, str]:
    """A new token row and the token itself (which is not stored). `expires_at` None: it never expires; otherwise
    it must be an aware time in the future (a token born expired, or one whose zero lifetime would read as 'never',
    is refused)."""
    if scope not in ("write", "read"):
        raise ValueError(f"scope must be write or read, got {scope!r}")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ValueError("expires_at needs a time zone (UTC)")
        if expires_at <= utcnow():
            raise ValueError(f"expires_at must be in the future, got {expires_at.isoformat()}; leave it out for a "
                             "token that never expires")
    plain = PREFIX + secrets.token_urlsafe(32)
    token = Token(name=name, token_hash=hash_token(plain), scope=scope, run_id=run_id, expires_at=expires_at)
    session.add(token)
    session.flush()
    return token, plain


def check_token(session: Session, plain: str) -> tuple[Token | None, str]:
    """The token row for `plain` if it may be used now, else None and why not."""
    token = session.scalars(select(Token).where(Token.token_hash == hash_token(plain))).first()
    if token is None:
        return None, "unknown token"
    if token.revoked:
        return None, "the token was revoked"
    if token.expires_at is not None and token.expires_at <= utcnow():
        return None, "the token has expired"
    return token, ""


def list_tokens(session: Session) -> list[Token]:
    return list(session.scalars(select(Token).order_by(Token.created_at)))


def revoke(session: Session, id_or_name: str) -> int:
    """Revoke the tokens with this id or name; returns how many."""
    return session.execute(update(Token).where(or_(Token.id == id_or_name, Token.name == id_or_name),
                                               Token.revoked.is_(False))
                           .values(revoked=True).execution_options(synchronize_session=False)).rowcount
