"""Sending mail from a script: ``spoolbox.send(...)`` and ``spoolbox.send_message(...)``.

::

    import spoolbox

    message_id = spoolbox.send(
        profile="/srv/spoolbox/spoolbox.toml",
        to="bob@example.org",
        subject="Report",
        body="Attached.",
        attachments=["report.pdf"],
    )

Both are synchronous and return once the message is durably queued: through the
daemon's local API, or straight into the store when no daemon runs (the daemon
sends it when it starts).  They return the spoolbox message id (for ``spoolbox
queue show ID``).  Recipients are e-mail addresses (``Bob <bob@example.org>`` or
``bob@example.org``), queued as ``SMTP:`` addresses: the profile's routing decides
the transport, and a recipient no transport serves refuses the whole message
(:class:`~spoolbox.api.client.UnroutableRecipient`, nothing queued).

The Django backend (:mod:`spoolbox.django`) shares :func:`envelope_address`,
:func:`without_bcc` and :func:`client_for`.
"""

from __future__ import annotations

import functools
import mimetypes
import os
import re
from collections.abc import Mapping, Sequence
from email import headerregistry, policy
from email.errors import HeaderParseError
from email.message import EmailMessage, Message
from email.utils import formatdate, make_msgid
from pathlib import Path

from ..model import Address, AddressError, NewMessage, Notify
from ..profile import Profile, find_profile, load_profile
from .client import Client

__all__ = [
    "Attachment",
    "client_for",
    "envelope_address",
    "send",
    "send_message",
    "without_bcc",
]

#: An attachment: a file's path, or ``(filename, content)`` or ``(filename,
#: content, mimetype)`` as Django's ``EmailMessage.attach`` takes it.
Attachment = str | os.PathLike[str] | tuple[str, bytes] | tuple[str, bytes, str]
#: Header fields that name blind-copy recipients: they never leave with the message.
_BLIND = (b"bcc", b"resent-bcc")
ProfileArg = str | os.PathLike[str] | Profile | None
#: A bare ASCII address of RFC 5322 dot-atoms (``bob.smith@example.org``): the
#: common case, which needs no parser.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
#: An address type, as ``TYPE:value`` starts (``spoolbox.model.Address.parse``).
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,31}")


# -- addresses ------------------------------------------------------------------------------
def envelope_address(text: str | tuple[str, str], where: str) -> Address:
    """The ``SMTP:`` address of one RFC 5322 mailbox (``bob@example.org``, ``Bob
    <bob@example.org>``, or Django's ``(name, address)``); a non-ASCII domain in its
    IDNA form.  Anything else raises :class:`~spoolbox.AddressError` naming ``where``
    (e.g. ``to[1]``) and the text."""
    if isinstance(text, str) and _PLAIN.fullmatch(text):
        return Address("SMTP", text)  # what the parser below makes of it, 20 times faster
    return _smtp(_mailbox(text, where), where)[0]


def _mailbox(text: str | tuple[str, str], where: str) -> headerregistry.Address:
    if isinstance(text, tuple) and len(text) == 2:
        text = str(headerregistry.Address(display_name=text[0], addr_spec=text[1]))
    if not isinstance(text, str):
        raise AddressError(f"{where}: an address must be a string, not {type(text).__name__}")
    found = _mailboxes(text, where)
    if len(found) != 1:
        raise AddressError(f"{where}: {text!r} is not one e-mail address (write bob@example.org)")
    return found[0]


def _mailboxes(text: str, where: str) -> tuple[headerregistry.Address, ...]:
    """The mailboxes of an address-list field's value; any defect refuses it."""
    try:
        header = policy.default.header_factory("to", text)
        found: tuple[headerregistry.Address, ...] = header.addresses
    except (HeaderParseError, ValueError, IndexError):  # the parser's IndexError: "bob@"
        found, header = (), None
    if header is None or header.defects or any(not m.username or not m.domain for m in found):
        raise AddressError(
            f"{where}: {text!r} is not an e-mail address (write it as bob@example.org)"
        )
    return found


def _smtp(mailbox: headerregistry.Address, where: str) -> tuple[Address, headerregistry.Address]:
    """The envelope address of ``mailbox``, and the mailbox as a header shows it,
    both with the domain in its IDNA (ASCII) form."""
    domain = mailbox.domain
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise AddressError(
                f"{where}: the domain {domain!r} is not a valid name ({exc})"
            ) from None
    shown = headerregistry.Address(mailbox.display_name, mailbox.username, domain)
    try:
        return Address.parse(f"SMTP:{shown.addr_spec}"), shown
    except AddressError as exc:
        raise AddressError(f"{where}: {exc}") from None


def _recipients(
    values: str | Sequence[str], where: str
) -> list[tuple[Address, headerregistry.Address | None]]:
    """``to=`` and the like (one string or several): each recipient's address and how
    the header shows it.  ``TYPE:value`` is a recipient of that address type
    (``MAILDIR:bob``): routed by its type, shown in no header."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[tuple[Address, headerregistry.Address | None]] = []
    for index, value in enumerate(items):
        name = f"{where}[{index}]"
        head, sep, rest = value.partition(":") if isinstance(value, str) else ("", "", "")
        if sep and _TYPE.fullmatch(head) and head.upper() != "SMTP":
            try:
                out.append((Address.parse(value), None))
            except AddressError as exc:
                raise AddressError(f"{name}: {exc}") from None
            continue
        out.append(_smtp(_mailbox(rest if sep and head.upper() == "SMTP" else value, name), name))
    return out


# -- content --------------------------------------------------------------------------------
def _header_block(content: bytes) -> int:
    """The length of the header section: its lines with their line ends, without the
    blank line that ends it (all of ``content`` if it has none)."""
    crlf, lf = content.find(b"\r\n\r\n"), content.find(b"\n\n")
    ends = [i + 2 for i in (crlf,) if i >= 0] + [i + 1 for i in (lf,) if i >= 0]
    return min(ends) if ends else len(content)


def without_bcc(content: bytes) -> bytes:
    """``content`` without its ``Bcc``/``Resent-Bcc`` fields (and their folded lines):
    a blind copy's address never leaves with the message."""
    end = _header_block(content)
    lines = content[:end].splitlines(keepends=True)
    kept: list[bytes] = []
    dropping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.partition(b":")[0].strip().lower() in _BLIND
        if not dropping:
            kept.append(line)
    if len(kept) == len(lines):
        return content
    return b"".join(kept) + content[end:]


def _with_date_and_id(content: bytes, hostname: str) -> bytes:
    """``content`` with a ``Date`` and a ``Message-ID`` field first if it has none."""
    head = content[: _header_block(content)].lower()
    names = {line.partition(b":")[0].strip() for line in head.splitlines()}
    extra = b""
    if b"date" not in names:
        extra += f"Date: {formatdate(localtime=True)}\r\n".encode()
    if b"message-id" not in names:
        extra += f"Message-ID: {make_msgid(domain=hostname)}\r\n".encode()
    return extra + content


def _attach(msg: EmailMessage, attachment: Attachment, where: str) -> None:
    if isinstance(attachment, tuple):
        filename, data, *rest = attachment
        ctype = rest[0] if rest else None
    else:
        path = Path(attachment)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise type(exc)(
                exc.errno, f"{where}: cannot attach {str(path)!r}: {exc.strerror}"
            ) from None
        filename, ctype = path.name, None
    if not isinstance(data, bytes):
        raise TypeError(f"{where}: the content of {filename!r} must be bytes")
    if ctype is None:
        guessed, encoding = mimetypes.guess_type(filename)
        ctype = guessed if guessed is not None and encoding is None else None
    maintype, _, subtype = (ctype or "application/octet-stream").partition("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)


# -- the client -------------------------------------------------------------------------------
def client_for(profile: ProfileArg = None) -> Client:
    """The client of ``profile`` (a path, a loaded :class:`~spoolbox.profile.Profile`,
    or None: ``$SPOOLBOX_PROFILE``, else ``./spoolbox.toml``).  A profile file is read
    once while it stays unchanged.  Raises :class:`~spoolbox.profile.ProfileError`
    (naming the file) if it is missing or invalid."""
    if isinstance(profile, Profile):
        return Client(profile)
    path = find_profile(profile).absolute()
    try:
        st = path.stat()
    except OSError:
        return Client(load_profile(path))  # raises the ProfileError that says what to do
    return _cached_client(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _cached_client(path: str, mtime_ns: int, size: int) -> Client:
    # Kept for the process: when the daemon is down, each thread's submissions share
    # one connection to the store (closed when the process ends).
    return Client(load_profile(path), keep_store_open=True)


def _submit(client: Client, message: NewMessage) -> str:
    result = client.submit(message)
    return str(result["id"])


# -- the API ---------------------------------------------------------------------------------
def send(
    *,
    to: str | Sequence[str],
    subject: str,
    body: str = "",
    profile: ProfileArg = None,
    sender: str | None = None,
    cc: str | Sequence[str] = (),
    bcc: str | Sequence[str] = (),
    reply_to: str | Sequence[str] = (),
    html: str | None = None,
    attachments: Sequence[Attachment] = (),
    headers: Mapping[str, str] | None = None,
    notify: Notify = Notify.FAILURE,
) -> str:
    """Build a message and queue it; returns its spoolbox id.

    ``to``, ``cc``, ``bcc``: e-mail addresses (one string or a list; ``TYPE:value``
    for a recipient of another address type, routed but shown in no header);
    ``bcc`` recipients get the message but appear in no header.  ``sender``: the
    From address (default: the profile's first ``[identities]`` entry).  ``html``:
    an HTML alternative of ``body``.  ``attachments``: paths, or ``(filename,
    bytes[, mimetype])``.  ``headers``: more header fields.  ``notify``: the reports
    the sender gets (``Notify.FAILURE | Notify.DELAY`` adds a delay report after the
    policy's ``delay_warning_after``; ``Notify.NEVER``: none).
    """
    client = client_for(profile)
    rcpts = _recipients(to, "to")
    copies = _recipients(cc, "cc")
    blind = _recipients(bcc, "bcc")
    answer = _recipients(reply_to, "reply_to")
    if not rcpts and not copies and not blind:
        raise AddressError("no recipient: give to= (or cc=, bcc=) at least one address")
    envelope, shown = _sender(client, sender)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = shown
    for name, value in (("To", rcpts), ("Cc", copies), ("Reply-To", answer)):
        mailboxes = [mailbox for _, mailbox in value if mailbox is not None]
        if mailboxes:
            msg[name] = mailboxes
        elif name == "To":
            msg["To"] = "undisclosed-recipients:;"  # as `spoolbox send` writes it
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=client.profile.spooler.hostname)
    for name, text in (headers or {}).items():
        if name.lower().encode() in _BLIND:
            raise ValueError(f"headers[{name!r}]: use bcc= (a Bcc field is never sent)")
        msg[name] = text
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for index, attachment in enumerate(attachments):
        _attach(msg, attachment, f"attachments[{index}]")
    everyone = tuple(address for address, _ in (*rcpts, *copies, *blind))
    message = NewMessage(
        sender=envelope, recipients=everyone, content=msg.as_bytes(), notify=notify
    )
    return _submit(client, message)


def _sender(client: Client, sender: str | None) -> tuple[Address, headerregistry.Address]:
    """The envelope sender and the From field's mailbox (the profile's first identity
    by default; one of another type, ``MAILDIR:postmaster``, is shown at the
    profile's hostname, as ``spoolbox send`` shows it)."""
    if sender is not None:
        return _smtp(_mailbox(sender, "sender"), "sender")
    default = client.profile.default_sender
    if default is None:
        raise AddressError(
            "no sender: pass sender='you@example.org', or add an [identities] entry to "
            f"the profile {client.profile.path}"
        )
    if default.type == "SMTP":
        return default, headerregistry.Address(addr_spec=default.value)
    return default, headerregistry.Address(
        username=default.value, domain=client.profile.spooler.hostname
    )


def send_message(
    message: Message,
    *,
    profile: ProfileArg = None,
    sender: str | None = None,
    to: str | Sequence[str] | None = None,
    notify: Notify = Notify.FAILURE,
) -> str:
    """Queue an :class:`email.message.EmailMessage` as it is; returns its spoolbox id.

    Recipients: ``to`` if given, else the addresses of the message's To, Cc and Bcc
    fields.  The envelope sender: ``sender``, else the From address, else the
    profile's first identity.  Bcc fields are removed from what is sent, and a
    missing Date or Message-ID is added; the caller's object is not changed.
    ``notify``: the reports the sender gets, as for :func:`send`.
    """
    if not isinstance(message, Message):
        raise TypeError(
            f"send_message takes an email.message.EmailMessage, not {type(message).__name__}"
        )
    client = client_for(profile)
    if to is not None:
        rcpts = [address for address, _ in _recipients(to, "to")]
    else:
        rcpts = [
            _smtp(mailbox, f"the {name} field")[0]
            for name in ("To", "Cc", "Bcc")
            for value in message.get_all(name, [])
            for mailbox in _mailboxes(str(value), f"the {name} field")
        ]
    if not rcpts:
        raise AddressError("no recipient: the message has no To, Cc or Bcc address; pass to=")
    if sender is not None:
        envelope: Address | None = envelope_address(sender, "sender")
    elif message.get("From"):
        envelope = envelope_address(str(message["From"]), "the From field")
    else:
        envelope = client.profile.default_sender
    content = without_bcc(message.as_bytes(policy=policy.SMTP))
    content = _with_date_and_id(content, client.profile.spooler.hostname)
    queued = NewMessage(sender=envelope, recipients=tuple(rcpts), content=content, notify=notify)
    return _submit(client, queued)
