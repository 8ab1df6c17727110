"""`ssah serve` (the REST API, the dashboard and a local worker) and `ssah tokens` (bearer tokens)."""
from __future__ import annotations

import argparse
import math
import sys

from .common import positive


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--expires-in-days must be a number of days, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"--expires-in-days must be above 0 (leave it out for a token that never "
                                         f"expires), got {text}")
    return value


def register(sub) -> None:
    serve = sub.add_parser("serve", help="the REST API with a local worker (settings from SSAH_* variables)")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1); on an address that is not "
                                                    "loopback every request needs a token (ssah tokens create)")
    serve.add_argument("--port", type=positive("--port", 65535), default=None, help="default 8000")
    serve.set_defaults(handler=cmd_serve)

    tokens = sub.add_parser("tokens", help="bearer tokens of the service")
    tsub = tokens.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="make a write token; it is printed once and stored hashed")
    create.add_argument("--name", required=True, help="who or what uses it")
    create.add_argument("--expires-in-days", type=_days, default=None, help="default: no expiry")
    tsub.add_parser("list", help="list tokens (names, scopes, expiry; never the tokens)")
    revoke = tsub.add_parser("revoke", help="revoke tokens by id or name")
    revoke.add_argument("token", help="id or name")
    tokens.set_defaults(handler=cmd_tokens)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app import mounts_for
    from backend.api.app import create_app
    from backend.api.logs import log_config
    from backend.settings import Settings

    settings = Settings(**{k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}"
    print(f"ssah: serving {url}  (API {url}/api/v1, docs {url}/docs; default model {settings.default_model}; "
          f"database {settings.database_url}; runs in {settings.runs_dir})", flush=True)
    if not settings.loopback:
        print("ssah: not a loopback address, so every request needs a token: ssah tokens create --name NAME",
              flush=True)
    app = create_app(settings, mounts=mounts_for(settings.host, settings.port))  # the dashboard at /
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", log_config=log_config("info"))
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from backend.settings import Settings
    from backend.store import tokens
    from backend.store.db import make_engine, session_factory
    from backend.store.tables import utcnow

    sessions = session_factory(make_engine(Settings().database_url))
    with sessions.begin() as session:
        if args.action == "create":
            expires = utcnow() + timedelta(days=args.expires_in_days) if args.expires_in_days is not None else None
            token, plain = tokens.create_token(session, args.name, scope="write", expires_at=expires)
            print(plain)
            print(f"token {token.id} ({args.name}): shown once, stored hashed; send it as "
                  "'Authorization: Bearer <token>'", file=sys.stderr)
        elif args.action == "list":
            for t in tokens.list_tokens(session):
                state = "revoked" if t.revoked else ("expired" if t.expires_at and t.expires_at <= utcnow()
                                                     else "active")
                scope = f"read run {t.run_id}" if t.run_id else t.scope
                expires = t.expires_at.isoformat(timespec="seconds") if t.expires_at else "never"
                print(f"{t.id}  {state:<8} {scope:<42} expires {expires:<25} {t.name}")
        else:
            count = tokens.revoke(session, args.token)
            if not count:
                raise ValueError(f"no active token with id or name {args.token!r}")
            print(f"revoked {count} token(s)")
    return 0
