"""spoolbox as Django's e-mail backend (``pip install 'spoolbox[django]'``).

settings.py::

    EMAIL_BACKEND = "spoolbox.django.EmailBackend"
    SPOOLBOX_PROFILE = "/var/lib/spoolbox/spoolbox.toml"  # default: $SPOOLBOX_PROFILE,
                                        # else ./spoolbox.toml, else /etc/spoolbox/spoolbox.toml

    # Django 6.1+: MAILERS = {"default": {"BACKEND": "spoolbox.django.EmailBackend",
    #                                     "OPTIONS": {"profile": "/var/lib/..."}}}

:meth:`EmailBackend.send_messages` queues the whole batch in one durable
transaction (one ``submit_many`` request to the daemon, or one store transaction
when the daemon is down; batches over 10,000 messages are committed 10,000 at a
time) and returns how many messages it queued.  Each queued message gets its
spoolbox id as ``message.spoolbox_id`` (for ``spoolbox queue show ID``).  The
bytes queued are what Django's SMTP backend sends (Bcc never in the headers); the
recipients are ``SMTP:`` addresses, routed by the profile, and a recipient no
transport serves refuses the batch (nothing queued).  docs/django.md says more,
and what ``fail_silently`` swallows.
"""

from __future__ import annotations

import email.policy
import os
from collections.abc import Sequence
from typing import Any

try:
    import django
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.mail.backends.base import BaseEmailBackend
except ImportError as exc:  # pragma: no cover - tested in a subprocess with Django blocked
    raise ImportError(
        f"spoolbox.django needs Django ({exc.name} cannot be imported): "
        "pip install 'spoolbox[django]'"
    ) from exc

from ..api.client import Client, ClientError
from ..api.sending import client_for, envelope_address, without_bcc
from ..api.wire import MAX_SUBMIT_MANY
from ..model import Address, NewMessage
from ..profile import ProfileError
from ..store import StoreError

__all__ = ["EmailBackend", "queued_message"]

#: What ``fail_silently`` swallows: the spooler could not take the batch (the
#: daemon refused it, a recipient is unroutable, the store failed).  Never: a bad
#: profile (ImproperlyConfigured) or a malformed address or message (ValueError),
#: which Django's SMTP backend does not swallow either.
_QUEUE_ERRORS = (ClientError, StoreError, OSError)


class EmailBackend(BaseEmailBackend):  # type: ignore[misc]  # Django ships no types
    """Queues Django's messages in spoolbox.  ``profile``: the profile's path (default:
    ``settings.SPOOLBOX_PROFILE``, else ``$SPOOLBOX_PROFILE``, else ./spoolbox.toml, else
    /etc/spoolbox/spoolbox.toml)."""

    def __init__(
        self,
        fail_silently: bool = False,
        *,
        profile: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # As Django's own backends: fail_silently is ours (Django 6.1's base class
        # refuses it from a mailer's OPTIONS), the rest (6.1: ``alias``) is the base's.
        super().__init__(**kwargs)
        self.fail_silently = fail_silently
        self.profile = (
            profile if profile is not None else getattr(settings, "SPOOLBOX_PROFILE", None)
        )

    def client(self) -> Client:
        """The client of the profile; a missing or invalid profile is
        ImproperlyConfigured (even with ``fail_silently``: it would drop every message)."""
        try:
            return client_for(self.profile)
        except ProfileError as exc:
            raise ImproperlyConfigured(
                f"spoolbox.django.EmailBackend: {exc} (set SPOOLBOX_PROFILE in the settings)"
            ) from exc

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        """Queue ``email_messages`` (those with recipients), all in one transaction;
        returns how many were queued and sets each one's ``spoolbox_id``."""
        converted = [(message, queued_message(message)) for message in email_messages or ()]
        batch = [(message, new) for message, new in converted if new is not None]
        if not batch:
            return 0
        client = self.client()
        sent = 0
        for start in range(0, len(batch), MAX_SUBMIT_MANY):
            chunk = batch[start : start + MAX_SUBMIT_MANY]
            try:
                ids = client.submit_many([new for _, new in chunk])["ids"]
            except _QUEUE_ERRORS:
                if not self.fail_silently:
                    raise
                return sent
            for (message, _), message_id in zip(chunk, ids, strict=True):
                message.spoolbox_id = message_id
            sent += len(chunk)
        return sent


def queued_message(message: Any) -> NewMessage | None:
    """What spoolbox queues for a Django ``EmailMessage`` (None if it has no
    recipient, which Django's backends skip): the bytes Django's SMTP backend would
    send, without Bcc fields, from ``from_email`` to ``to``, ``cc`` and ``bcc``."""
    recipients: list[Address] = []
    for field in ("to", "cc", "bcc"):
        for index, address in enumerate(getattr(message, field)):
            if address:
                recipients.append(envelope_address(address, f"{field}[{index}]"))
    if not recipients:
        return None
    if django.VERSION >= (6, 0):
        content = message.message(policy=email.policy.SMTP).as_bytes()
    else:
        content = message.message().as_bytes(linesep="\r\n")
    return NewMessage(
        sender=envelope_address(message.from_email, "from_email"),
        recipients=tuple(recipients),
        content=without_bcc(content),
    )
