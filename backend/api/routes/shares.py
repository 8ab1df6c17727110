"""Share links: a URL that pins a run and a dashboard view, with a read-only token for that run that expires."""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import unquote, urlencode, urlsplit

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import update

from backend.store.tables import Run, Share, Token, utcnow
from backend.store.tokens import create_token

from ..checks import bad_field, check_at_most
from ..deps import SessionDep, SettingsDep, WriterDep
from ..schemas import Deleted, ShareCreate, ShareOut, errors

router = APIRouter(prefix="/shares", tags=["shares"])


DECODE_ROUNDS = 4


def decoded_path(path: str) -> str | None:
    """`path` percent-decoded until nothing changes (a browser or a proxy may decode it again); None when it is
    still encoded after a few rounds."""
    for _ in range(DECODE_ROUNDS):
        decoded = unquote(path)
        if decoded == path:
            return path
        path = decoded
    return None


def check_view(view: str, run_id: str) -> str:
    """A dashboard path (and query) of this run: relative, under /runs/{run_id}, judged after decoding, with no
    '.' or '..' segment and no backslash."""
    parts = urlsplit(view)
    if parts.scheme or parts.netloc or not view.startswith("/") or view.startswith("//"):
        raise bad_field(("body", "view"), "view must be a path of the dashboard such as /runs/ID?h_scu=0.02")
    path = decoded_path(parts.path)
    if path is None or "\\" in path or any(ord(c) < 32 for c in path):
        raise bad_field(("body", "view"), "view must be a plain path (no backslashes, control or multiply "
                                          "encoded characters)")
    if {".", ".."} & set(path.split("/")):
        raise bad_field(("body", "view"), "view must not contain '.' or '..' segments (encoded or not)")
    if path.rstrip("/") != f"/runs/{run_id}" and not path.startswith(f"/runs/{run_id}/"):
        raise bad_field(("body", "view"), f"view must be a view of the shared run: /runs/{run_id} or below it")
    return view


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ShareOut, responses=errors(400, 403, 404, 413))
def create_share(body: ShareCreate, _: WriterDep, session: SessionDep, settings: SettingsDep) -> ShareOut:
    """A link to a run's view for a teammate: its token reads that run (and its units, roles and jobs) only,
    cannot write, and stops working at `expires_at`."""
    check_at_most(body.expires_in_hours, settings.max_share_hours, ("body", "expires_in_hours"), "max_share_hours")
    run = session.get(Run, body.run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no run {body.run_id!r}")
    view = check_view(body.view or f"/runs/{run.id}", run.id)
    expires_at = utcnow() + timedelta(hours=body.expires_in_hours)
    token, plain = create_token(session, f"share of run {run.id}", scope="read", run_id=run.id,
                                expires_at=expires_at)
    share = Share(run_id=run.id, view=view, token_id=token.id, expires_at=expires_at)
    session.add(share)
    session.commit()
    url = f"{settings.base_url}{view}{'&' if '?' in view else '?'}{urlencode({'token': plain})}"
    return ShareOut(id=share.id, run_id=run.id, view=view, url=url, token=plain, expires_at=expires_at)


@router.delete("/{share_id}", response_model=Deleted, responses=errors(403, 404))
def revoke_share(share_id: str, _: WriterDep, session: SessionDep) -> Deleted:
    """Stop a share link from working now."""
    share = session.get(Share, share_id)
    if share is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no share {share_id!r}")
    session.execute(update(Token).where(Token.id == share.token_id).values(revoked=True))
    session.delete(share)
    session.commit()
    return Deleted(id=share_id, status="deleted")
