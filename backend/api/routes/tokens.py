"""Who am I: the dashboard asks this to know whether to offer writes (a share link is read-only)."""
from __future__ import annotations

from fastapi import APIRouter

from ..deps import CallerDep
from ..schemas import CallerOut, errors

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.get("/me", response_model=CallerOut, responses=errors())
def who_am_i(caller: CallerDep) -> CallerOut:
    """The caller's token: scope (read or write), the run a share token is pinned to, and when it expires."""
    token = caller.token
    if token is None:
        return CallerOut(auth=False, scope="write")
    return CallerOut(auth=True, scope=token.scope, run_id=token.run_id, name=token.name, expires_at=token.expires_at)
