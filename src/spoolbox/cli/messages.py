"""``spoolbox submit`` (a message file or stdin) and ``spoolbox send`` (build one)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import mimetypes
import os
import sys
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import BinaryIO

import click

from ..api.client import EXIT_ERROR
from ..model import Address, AddressError, MessageError, NewMessage, Notify, Priority
from ._common import Ctx, emit_json, fail, json_option, pass_ctx

_PRIORITIES = [priority.name.lower() for priority in Priority]
#: Attachments are read and encoded this many bytes at a time: a multiple of the 57
#: bytes of one base64 line, so that the blocks' lines are the whole file's lines.
_BASE64_BLOCK = 57 * 1024


def _addresses(values: tuple[str, ...], default_type: str) -> list[Address]:
    out = []
    for value in values:
        try:
            out.append(Address.parse(value, default_type=default_type))
        except AddressError as exc:
            fail(f"bad address {value!r}: {exc}", EXIT_ERROR, kind="bad_request")
    return out


def _sender(obj: Ctx, value: str | None, default_type: str) -> Address | None:
    if value is not None:
        if value in ("", "<>"):
            return None
        return _addresses((value,), default_type)[0]
    return obj.profile().default_sender


def _notify(value: str | None) -> Notify:
    """``--notify``: the reports the sender asks for (default: failure)."""
    if value is None:
        return Notify.FAILURE
    try:
        return Notify.from_text(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--notify'") from None


_NOTIFY_HELP = (
    "Reports for the sender: never, or a comma list of success, failure, delay "
    "(default: failure; delay: a report after [policy] delay_warning_after)."
)


def _submit(obj: Ctx, message: NewMessage, as_json: bool) -> None:
    result = obj.client().submit(message)
    if as_json:
        emit_json(result)
    else:
        click.echo(result["id"])
        if result.get("via") in ("store", "maildrop"):
            click.echo(f"spoolbox: {result.get('note')}", err=True)


@click.command("submit")
@click.argument("file", type=click.File("rb"), default="-")
@click.option("--to", "to", multiple=True, metavar="ADDR", help="Recipient (default: To/Cc/Bcc).")
@click.option("--from", "sender", metavar="ADDR", help="Envelope sender ('' for none).")
@click.option("--default-type", default="SMTP", show_default=True, help="Type of bare addresses.")
@click.option("--priority", type=click.Choice(_PRIORITIES), default="normal", show_default=True)
@click.option("--notify", metavar="WHEN", help=_NOTIFY_HELP)
@json_option
@pass_ctx
def submit_cmd(
    obj: Ctx,
    file: BinaryIO,
    to: tuple[str, ...],
    sender: str | None,
    default_type: str,
    priority: str,
    notify: str | None,
    as_json: bool,
) -> None:
    """Submit an RFC 5322 message from FILE (or stdin); prints its id."""
    content = file.read()
    rcpts = _addresses(to, default_type) if to else None
    snd: Address | str | None = None
    if sender in ("", "<>"):
        snd = ""  # the null sender
    elif sender is not None:
        snd = _addresses((sender,), default_type)[0]
    try:
        message = NewMessage.from_bytes(
            content,
            sender=snd,
            recipients=rcpts,
            default_type=default_type,
            priority=Priority[priority.upper()],
            notify=_notify(notify),
        )
        default = obj.profile().default_sender
        if sender is None and message.sender is None and default is not None:
            message = dataclasses.replace(message, sender=default)
    except MessageError as exc:
        fail(f"cannot submit: {exc}", EXIT_ERROR, kind="bad_request")
    _submit(obj, message, as_json)


@click.command("send")
@click.option("--to", "to", multiple=True, required=True, metavar="ADDR", help="Recipient.")
@click.option("--cc", "cc", multiple=True, metavar="ADDR", help="Copy recipient.")
@click.option("--from", "sender", metavar="ADDR", help="Sender (default: first identity).")
@click.option("--subject", default="", help="Subject.")
@click.option("--body", default=None, help="Body text ('-': read stdin; default: empty).")
@click.option(
    "--attach",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Attach a file.",
)
@click.option("--default-type", default="SMTP", show_default=True, help="Type of bare addresses.")
@click.option("--priority", type=click.Choice(_PRIORITIES), default="normal", show_default=True)
@click.option("--notify", metavar="WHEN", help=_NOTIFY_HELP)
@json_option
@pass_ctx
def send_cmd(
    obj: Ctx,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    sender: str | None,
    subject: str,
    body: str | None,
    attach: tuple[Path, ...],
    default_type: str,
    priority: str,
    notify: str | None,
    as_json: bool,
) -> None:
    """Build a MIME message and submit it; prints its id."""
    reports = _notify(notify)
    rcpts = _addresses(to, default_type)
    ccs = _addresses(cc, default_type)
    snd = _sender(obj, sender, default_type)
    msg = EmailMessage()

    def header(addrs: list[Address]) -> str:
        # Only SMTP addresses are RFC 5322 addresses; others stay in the envelope.
        shown = [a.value for a in addrs if a.type == "SMTP"]
        return ", ".join(shown)

    hostname = obj.profile().spooler.hostname  # the profile's hostname key
    if snd is not None:
        msg["From"] = snd.value if snd.type == "SMTP" else f"{snd.value}@{hostname}"
    msg["To"] = header(rcpts) or "undisclosed-recipients:;"
    if header(ccs):
        msg["Cc"] = header(ccs)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=hostname)
    text = sys.stdin.read() if body == "-" else (body or "")
    msg.set_content(text)
    stand_ins: list[tuple[bytes, Path]] = []
    for path in attach:
        ctype, encoding = mimetypes.guess_type(path.name)
        if ctype is None or encoding is not None:
            ctype = "application/octet-stream"
        maintype, _, subtype = ctype.partition("/")
        # A stand-in for the file's bytes: they are encoded into the serialised
        # message afterwards, block by block (see _attached).
        stand_in = os.urandom(30)
        msg.add_attachment(stand_in, maintype=maintype, subtype=subtype, filename=path.name)
        stand_ins.append((binascii.b2a_base64(stand_in, newline=False) + b"\r\n", path))
    try:
        content = _attached(msg.as_bytes(policy=policy.SMTP), stand_ins)
    except OSError as exc:
        fail(f"cannot read an attachment: {exc}", EXIT_ERROR, kind="bad_request")
    try:
        message = NewMessage.from_bytes(
            content,
            sender=snd,
            recipients=[*rcpts, *ccs],
            priority=Priority[priority.upper()],
            notify=reports,
        )
    except MessageError as exc:
        fail(f"cannot send: {exc}", EXIT_ERROR, kind="bad_request")
    _submit(obj, message, as_json)


def _attached(skeleton: bytes, stand_ins: list[tuple[bytes, Path]]) -> bytes:
    """The serialised message with each attachment's stand-in line replaced by the
    file's base64 lines, as the ``email`` package writes them (76 characters, CRLF),
    encoded block by block into one buffer.  The ``email`` package, given the file,
    held a large one about six times over (its bytes, the encoded text, the lines,
    the serialised message); this holds the message once."""
    out = io.BytesIO()
    rest = skeleton
    for line, path in stand_ins:
        head, found, rest = rest.partition(line)
        if not found:  # pragma: no cover - the email package writes a short part as one line
            raise RuntimeError(f"the attachment {path.name} was not found in the message")
        out.write(head)
        with open(path, "rb") as fh:
            while block := fh.read(_BASE64_BLOCK):
                out.write(base64.encodebytes(block).replace(b"\n", b"\r\n"))
    out.write(rest)
    return out.getvalue()
