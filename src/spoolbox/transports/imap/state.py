"""The folder's durable record in the session's profile section, read without I/O.

The section holds ``uidvalidity`` (the folder's UIDVALIDITY the rest belongs to),
``last_uid`` (the watermark: every UID up to it is in the inbox; it is written with
each message through ``writer.set_state``, so it commits with the message) and
``skipped_uids`` (UIDs over ``max_size``, left on the server: the removal of what
lies at or below the watermark must leave them alone).  Under another UIDVALIDITY
none of it means anything: the watermark is 0 and nothing is skipped.
"""

from __future__ import annotations

from typing import Any

from spoolbox.contract import ProfileSection

#: The keys the session writes (``last_uid`` and ``uidvalidity`` with each message).
UIDVALIDITY = "uidvalidity"
LAST_UID = "last_uid"
SKIPPED_UIDS = "skipped_uids"


def changed_from(section: ProfileSection, uidvalidity: int) -> Any:
    """The UIDVALIDITY the record belongs to if it is not ``uidvalidity``, else None."""
    stored = section.get(UIDVALIDITY)
    return stored if stored is not None and stored != uidvalidity else None


def watermark(section: ProfileSection, uidvalidity: int) -> int:
    """The committed ``last_uid`` if it belongs to ``uidvalidity``, else 0."""
    stored = section.get(UIDVALIDITY)
    last = section.get(LAST_UID, 0)
    if stored is None or stored != uidvalidity:
        return 0
    return int(last) if isinstance(last, int) else 0


def skipped_uids(section: ProfileSection, uidvalidity: int) -> set[int]:
    """The UIDs recorded as skipped under ``uidvalidity`` (none under another)."""
    if section.get(UIDVALIDITY) not in (None, uidvalidity):
        return set()
    value = section.get(SKIPPED_UIDS, [])
    return {int(u) for u in value} if isinstance(value, list) else set()


def skip_update(section: ProfileSection, uidvalidity: int, uid: int) -> dict[str, Any] | None:
    """The update that records ``uid`` as skipped (None if it is recorded already)."""
    recorded = skipped_uids(section, uidvalidity)
    if uid in recorded:
        return None
    return {UIDVALIDITY: uidvalidity, SKIPPED_UIDS: sorted({*recorded, uid})}


def restart_update(uidvalidity: int) -> dict[str, Any]:
    """The update after a UIDVALIDITY change: from UID 0, nothing skipped."""
    return {UIDVALIDITY: uidvalidity, LAST_UID: 0, SKIPPED_UIDS: None}
