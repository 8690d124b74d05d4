"""A session whose gateway (batch job) is gone for good, and the other sessions on it."""

from __future__ import annotations

import logging

from jlabgw.errors import JlabgwError
from jlabgw.sessions.session import Session, SessionTable

__all__ = ["lose_with_siblings"]

log = logging.getLogger(__name__)


async def lose_with_siblings(sessions: SessionTable, session: Session, why: str) -> bool:
    """``session``'s gateway is gone, ``why``: it leaves the table, and every later call on it
    raises :class:`SessionLostError` saying so, for the server's life. So do the other
    sessions on that gateway: the backend keeps its answer for a lost gateway, so asking each
    of them costs nothing (a session on a newer gateway of the lane costs one check, and
    stays). False if ``session`` was no longer in the table (nothing changed)."""
    if not sessions.lose(session, session.lost_message(why)):
        return False  # shut down meanwhile, or found lost already (by a sibling)
    log.warning("session %s is lost: %s", session.id, why)
    for other in sessions:
        if other.lane != session.lane:
            continue  # another shape's job
        try:
            other_why = await other.conn.gateway_lost()
        except JlabgwError as exc:  # it finds out on its own next call
            log.info("session %s: cannot tell whether its gateway is gone: %s", other.id, exc)
            continue
        if other_why and sessions.lose(other, other.lost_message(other_why)):
            log.warning("session %s is lost too: %s", other.id, other_why)
            await other.conn.close()  # a cell running there ends with the same error
    return True
