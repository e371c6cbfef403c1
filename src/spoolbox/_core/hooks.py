"""Spooler hooks (ISpoolerHook): loaded from the profile's ``[[hooks]]`` in order,
run cooperatively and measured like providers, each with a status row of its own.

:class:`HookChain` runs the chain over one message and returns what it decided, a
frozen :class:`OutboundOutcome` or :class:`InboundOutcome`; what that means for the
queue (a stored record, a settle, a new message, the inbox folder) is
:mod:`.hosts.hooked`'s.  Every hook call goes through the slice meter under its own
name (``hook:NAME``), so an overrun is counted on the hook's row and the watchdog
names the hook that holds the loop; ``policy.call_timeout`` bounds each call.

Outbound, a hook that raises, times out or answers something that is not a verdict
stops the chain with :class:`HookFailed` (the message is deferred and retried);
inbound, the error is recorded and the message goes on to the inbox unfiled (a
failing filter never loses mail).  A hook that could not be loaded fails every call
the same way: mail waits for it rather than bypassing it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..contract.hooks import (
    Change,
    Delete,
    FileTo,
    HookFlags,
    HookMessage,
    Keep,
    Reroute,
)
from ..model import Address, AddressError, ResourceType, StatusCode
from ..status import StatusRow, StatusTable
from .config import HOOK_ENTRY_POINT_GROUP, HookConfig, load_provider_class
from .slices import SliceMeter

__all__ = [
    "HOOK_ROW_PREFIX",
    "HookChain",
    "HookFailed",
    "InboundOutcome",
    "OutboundOutcome",
]

T = TypeVar("T")
log = logging.getLogger("spoolbox.hooks")
#: A hook's status row is named ``hook:NAME``.
HOOK_ROW_PREFIX = "hook:"


class HookFailed(Exception):
    """An outbound hook failed (raised, timed out, answered garbage, not loaded)."""

    def __init__(self, hook: str, text: str) -> None:
        super().__init__(f"hook {hook!r} failed: {text}")
        self.hook = hook


@dataclass(frozen=True, slots=True)
class OutboundOutcome:
    """What the outbound chain decided for one message and transport."""

    content: bytes | None = None  # changed content; None: as stored
    changed_by: tuple[str, ...] = ()
    reroute: tuple[Address, ...] | None = None
    delete: Delete | None = None
    by: str | None = None  # the hook that rerouted or deleted (and ended the chain)

    @property
    def keep(self) -> bool:
        return self.content is None and self.reroute is None and self.delete is None

    def to_record(self) -> dict[str, Any]:
        """The JSON form kept in the store until the message is done."""
        record: dict[str, Any] = {"changed_by": list(self.changed_by), "by": self.by}
        if self.content is not None:
            record["content"] = base64.b64encode(self.content).decode("ascii")
        if self.reroute is not None:
            record["reroute"] = [str(a) for a in self.reroute]
        if self.delete is not None:
            record["delete"] = {"reason": self.delete.reason, "status": self.delete.status}
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> OutboundOutcome:
        content = record.get("content")
        reroute = record.get("reroute")
        delete = record.get("delete")
        return cls(
            content=base64.b64decode(content) if isinstance(content, str) else None,
            changed_by=tuple(record.get("changed_by") or ()),
            reroute=tuple(Address.parse(a) for a in reroute) if reroute else None,
            delete=Delete(str(delete["reason"]), str(delete["status"])) if delete else None,
            by=record.get("by"),
        )


@dataclass(frozen=True, slots=True)
class InboundOutcome:
    """What the inbound chain decided for one received message."""

    folder: str | None = None
    delete: Delete | None = None
    by: str | None = None
    errors: tuple[str, ...] = ()

    def meta(self) -> dict[str, Any]:
        """The inbox entry's ``meta``: its folder, and the hooks that failed on it."""
        meta: dict[str, Any] = {}
        if self.folder is not None:
            meta["folder"] = self.folder
        if self.errors:
            meta["hook_errors"] = list(self.errors)
        return meta


class _Hook:
    """One configured hook: its object (or why it could not be made), its row, and
    the slice owner its calls are charged to."""

    kind = ""  # how the watchdog names it: its name, ``hook:NAME``, says enough

    def __init__(self, config: HookConfig, status: StatusTable, budget: float) -> None:
        self.config = config
        self.name = HOOK_ROW_PREFIX + config.name
        self.obj: Any = None
        self.error: str | None = None
        self._status = status
        self._budget = budget
        self.counters: dict[str, int] = {
            "calls": 0,
            "changed": 0,
            "rerouted": 0,
            "deleted": 0,
            "filed": 0,
            "errors": 0,
            "slow_slices": 0,
        }

    @property
    def exempt_from_budget(self) -> bool:
        return False

    def record_slice(self, seconds: float, overran: bool) -> None:
        if overran:
            self.counters["slow_slices"] += 1
            self._show(
                detail=(
                    f"slow: a slice ran {seconds * 1000:.1f} ms, over the "
                    f"{self._budget * 1000:.1f} ms budget ({self.counters['slow_slices']} so "
                    "far); see docs/providers.md#slices"
                )
            )

    def directions(self) -> HookFlags:
        if self.obj is None:
            return HookFlags.INBOUND | HookFlags.OUTBOUND  # mail waits for a broken hook
        flags = HookFlags.NONE
        if callable(getattr(self.obj, "outbound", None)):
            flags |= HookFlags.OUTBOUND
        if callable(getattr(self.obj, "inbound", None)):
            flags |= HookFlags.INBOUND
        return flags

    def start(self) -> None:
        code = StatusCode.AVAILABLE
        try:
            cls = load_provider_class(
                self.config.hook, group=HOOK_ENTRY_POINT_GROUP, what="spooler hook"
            )
            self.obj = cls(dict(self.config.options))
        except Exception as exc:
            self.error = f"cannot load hook {self.config.hook!r}: {exc}"
            code = StatusCode.FAILURE
            log.error("hook %r: %s", self.config.name, self.error)
        self._status.put(
            StatusRow(
                name=self.name,
                resource_type=ResourceType.HOOK_PROVIDER,
                provider_display=f"hook {_spec_name(self.config.hook)}",
                status_code=code,
                detail=self.error,
                counters=dict(self.counters),
            )
        )

    def _show(self, **changes: Any) -> None:
        if self.name in self._status:
            self._status.update(self.name, counters=dict(self.counters), **changes)

    def count(self, counter: str) -> None:
        self.counters[counter] += 1
        self._show()

    def failed(self, text: str) -> None:
        self.counters["errors"] += 1
        self._show(detail=text)
        log.error("%s", text)


class HookChain:
    """The configured hooks, in order; runs them over messages."""

    def __init__(
        self,
        configs: Sequence[HookConfig],
        *,
        status: StatusTable,
        meter: SliceMeter,
        call_timeout: float,
    ) -> None:
        self._hooks = [_Hook(c, status, meter.budget) for c in configs]
        self._meter = meter
        self._timeout = call_timeout

    def __repr__(self) -> str:
        return f"<HookChain {[h.config.name for h in self._hooks]}>"

    def start(self) -> None:
        """Load and make every hook (HPProviderInit), and put up their rows."""
        for hook in self._hooks:
            hook.start()

    async def close(self) -> None:
        for hook in self._hooks:
            close = getattr(hook.obj, "close", None)
            if callable(close):
                try:
                    await self._call(hook, close())
                except Exception as exc:
                    log.warning("hook %r: close failed: %s", hook.config.name, exc)

    @property
    def outbound(self) -> bool:
        """Whether any hook sees outbound mail."""
        return any(h.directions() & HookFlags.OUTBOUND for h in self._hooks)

    @property
    def inbound(self) -> bool:
        return any(h.directions() & HookFlags.INBOUND for h in self._hooks)

    async def _call(self, hook: _Hook, coro: Coroutine[Any, Any, T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._meter.run(hook, coro)
        except TimeoutError:
            raise TimeoutError(
                f"it ran longer than {self._timeout:g} s and was cancelled (policy.call_timeout)"
            ) from None

    async def run_outbound(self, message: HookMessage) -> OutboundOutcome:
        """The outbound chain over ``message``; raises :class:`HookFailed`."""
        content: bytes | None = None
        changed: list[str] = []
        current = message
        for hook in self._hooks:
            if not hook.directions() & HookFlags.OUTBOUND:
                continue
            name = hook.config.name
            if hook.obj is None:
                raise HookFailed(name, hook.error or "not loaded")
            hook.counters["calls"] += 1
            try:
                verdict = await self._call(hook, hook.obj.outbound(current))
                if isinstance(verdict, Reroute):
                    targets = tuple(
                        a if isinstance(a, Address) else Address.parse(str(a), default_type="SMTP")
                        for a in verdict.recipients
                    )
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and _cancelling():
                    raise
                failure = HookFailed(name, _describe(exc))
                hook.failed(f"{failure} on message {message.ref}")
                raise failure from None
            if isinstance(verdict, Keep):
                continue
            if isinstance(verdict, Change):
                content = verdict.content
                changed.append(name)
                current = _with_content(current, content)
                hook.count("changed")
                continue
            if isinstance(verdict, Reroute):
                hook.count("rerouted")
                return OutboundOutcome(content, tuple(changed), reroute=targets, by=name)
            if isinstance(verdict, Delete):
                hook.count("deleted")
                return OutboundOutcome(content, tuple(changed), delete=verdict, by=name)
            failure = HookFailed(
                name,
                f"outbound() returned {verdict!r}; expected KEEP, Change, Reroute or Delete",
            )
            hook.failed(f"{failure} on message {message.ref}")
            raise failure
        return OutboundOutcome(content, tuple(changed))

    async def run_inbound(self, message: HookMessage) -> InboundOutcome:
        """The inbound chain over ``message``; never raises (errors are collected)."""
        folder: str | None = None
        errors: list[str] = []
        for hook in self._hooks:
            if not hook.directions() & HookFlags.INBOUND:
                continue
            name = hook.config.name
            if hook.obj is None:
                errors.append(f"hook {name!r}: {hook.error}")
                continue
            hook.counters["calls"] += 1
            try:
                verdict = await self._call(hook, hook.obj.inbound(message))
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and _cancelling():
                    raise
                text = f"hook {name!r} failed: {_describe(exc)}"
                hook.failed(f"{text} on inbound message {message.ref}; kept in the inbox")
                errors.append(text)
                continue
            if isinstance(verdict, Keep):
                pass
            elif isinstance(verdict, FileTo):
                folder = verdict.folder
                hook.count("filed")
            elif isinstance(verdict, Delete):
                hook.count("deleted")
                return InboundOutcome(folder, verdict, name, tuple(errors))
            else:
                text = (
                    f"hook {name!r} failed: inbound() returned {verdict!r}; expected KEEP, "
                    "FileTo or Delete"
                )
                hook.failed(f"{text} on inbound message {message.ref}; kept in the inbox")
                errors.append(text)
        return InboundOutcome(folder, None, None, tuple(errors))


def _spec_name(spec: str | type) -> str:
    return spec if isinstance(spec, str) else f"{spec.__module__}:{spec.__qualname__}"


def _with_content(message: HookMessage, content: bytes) -> HookMessage:
    return HookMessage(
        ref=message.ref,
        direction=message.direction,
        transport=message.transport,
        sender=message.sender,
        recipients=message.recipients,
        content=content,
        info=message.info,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AddressError):
        return f"Reroute named a bad address: {exc}"
    if isinstance(exc, asyncio.CancelledError):
        return "it was cancelled"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (not just the hook)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
