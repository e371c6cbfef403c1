"""The store conformance suite: every rule of :class:`~spoolbox.store.base.Store`, as checks.

A backend conforms when :func:`check_store` passes::

    from spoolbox.testing.store_conformance import check_store

    async def test_my_store_conforms(tmp_path):
        paths = iter(tmp_path / f"{i}.db" for i in itertools.count())
        await check_store(lambda: MyStore(next(paths)))

``factory`` returns a fresh, *unopened* store (or an awaitable of one) each time it is
called; every check gets its own store, opens it, and closes it afterwards.
:data:`STORE_CHECKS` maps each check's name to its coroutine function, so a test
suite can run one test per check::

    @pytest.mark.parametrize("name", STORE_CHECKS)
    async def test_store(name, tmp_path):
        await run_store_check(name, lambda: MyStore(tmp_path / "store.db"))

Checks never read the clock: every time is a float they pass in (``1000.0`` ...),
as the spooler does with its own clock.  They use the address types ``X`` and ``Y``
routed to the transports ``"x"`` and ``"y"``.  Failures are ``AssertionError`` with
a sentence saying what the store did and what the protocol asks; the checks do not
use ``assert`` statements, so they also run under ``python -O``.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable
from typing import Any

from ..model import (
    Address,
    IllegalTransition,
    MessageInfo,
    MessageState,
    Notify,
    Priority,
    RecipientRecord,
    RecipientState,
)
from ..store.base import (
    ClaimedJob,
    InboundMessage,
    LeaseLost,
    RecipientUpdate,
    Store,
    StoreError,
    UnknownMessage,
)
from .store_kit import (
    _LEASE,
    _LIFETIME,
    _R,
    _T0,
    STORE_CHECKS,
    StoreCheck,
    StoreFactory,
    _check,
    _claim_one,
    _content,
    _equal,
    _expect,
    _fail_with_reports,
    _gone,
    _ids,
    _new,
    _raises,
    _settle_all,
    _snapshot,
    _states,
    _submit,
)

__all__ = [
    "STORE_CHECKS",
    "StoreCheck",
    "StoreFactory",
    "check_store",
    "run_store_check",
]


async def run_store_check(name: str, factory: StoreFactory) -> None:
    """Run one check (by name) on a fresh store from ``factory``, then close it."""
    check = STORE_CHECKS[name]
    made = factory()
    store = await made if inspect.isawaitable(made) else made
    await store.open()
    try:
        await check(store)
    finally:
        await store.close()


async def check_store(factory: StoreFactory) -> None:
    """Run every check, each on a fresh store.

    Raises AssertionError naming every failing check (with the first failure as its
    cause); an unexpected exception inside a check counts as a failure of that check.
    """
    failures: list[tuple[str, BaseException]] = []
    for name in STORE_CHECKS:
        try:
            await run_store_check(name, factory)
        except Exception as exc:
            failures.append((name, exc))
    if failures:
        lines = "\n".join(f"  {name}: {type(e).__name__}: {e}" for name, e in failures)
        names = ", ".join(name for name, _ in failures)
        raise AssertionError(
            f"store failed {len(failures)} conformance check(s): {names}\n{lines}"
        ) from failures[0][1]


# -- submission -------------------------------------------------------------------------


@_check
async def _protocol_implemented(store: Store) -> None:
    _expect(isinstance(store, Store), f"{type(store).__name__} lacks methods of Store")


@_check
async def _submit_returns_info(store: Store) -> None:
    message = _new(
        "X:bob",
        "Y:carol",
        id="m-info",
        subject="hello",
        priority=Priority.HIGH,
        notify=Notify.SUCCESS | Notify.FAILURE,
        envelope_id="env-1",
    )
    info = await store.submit(message, now=_T0, lifetime=_LIFETIME)
    expected = MessageInfo(
        id="m-info",
        sender=Address.parse("SMTP:alice@example.org"),
        priority=Priority.HIGH,
        submitted_at=_T0,
        send_at=None,
        expires_at=_T0 + _LIFETIME,
        notify=Notify.SUCCESS | Notify.FAILURE,
        is_report=False,
        envelope_id="env-1",
        size=len(message.content),
        subject="hello",
    )
    _equal(info, expected, "submit() result")
    _equal(await store.get_message("m-info"), expected, "get_message() after submit")
    _equal(
        await store.recipients("m-info"),
        [
            RecipientRecord("m-info", 0, Address.parse("X:bob"), _R.QUEUED, updated_at=_T0),
            RecipientRecord("m-info", 1, Address.parse("Y:carol"), _R.QUEUED, updated_at=_T0),
        ],
        "recipients() after submit",
    )
    # The message's own lifetime wins over the policy and starts at its send-at time
    # (a message scheduled far ahead does not expire unsent); report flag is kept.
    report = _new(
        "X:alice", id="m-report", sender=None, lifetime=60.0, send_at=_T0 + 10, is_report=True
    )
    info2 = await store.submit(report, now=_T0 + 1, lifetime=_LIFETIME)
    _equal(
        (info2.sender, info2.expires_at, info2.send_at, info2.is_report),
        (None, _T0 + 10 + 60, _T0 + 10, True),
        "sender, expiry, send-at and report flag of a report with its own lifetime",
    )


@_check
async def _submit_keeps_return_content(store: Store) -> None:
    # RFC 3461 RET: True FULL, False HDRS, None the report kind's default; kept as
    # given by submit and submit_many, and read back by every reader of a message.
    wanted = {"ret-full": True, "ret-hdrs": False, "ret-none": None}
    many = {f"{mid}-many": ret for mid, ret in wanted.items()}
    infos = [await _submit(store, "X:a", id=mid, return_content=ret) for mid, ret in wanted.items()]
    _equal(
        [info.return_content for info in infos],
        list(wanted.values()),
        "return_content of submit()'s results",
    )
    infos_many = await store.submit_many(
        [_new("X:b", id=mid, return_content=ret) for mid, ret in many.items()],
        now=_T0,
        lifetime=_LIFETIME,
        routes=[["x"]] * len(many),
    )
    _equal(
        [info.return_content for info in infos_many],
        list(many.values()),
        "return_content of submit_many()'s results",
    )
    every = {**wanted, **many}
    for mid, ret in every.items():
        _equal((await store.get_message(mid)).return_content, ret, f"get_message({mid!r})")
    _equal(
        {s.info.id: s.info.return_content for s in await store.list_messages(now=_T0)},
        every,
        "return_content of list_messages()'s messages",
    )
    jobs = await store.claim("x", owner="o1", now=_T0, lease=_LEASE, limit=len(every))
    _equal(
        {job.message.id: job.message.return_content for job in jobs},
        every,
        "return_content of claim()'s jobs' messages",
    )
    for job in jobs:
        settled = await _settle_all(store, job, _R.DELIVERED, now=_T0 + 1)
        _equal(settled.return_content, every[job.message.id], f"settle({job.message.id!r})")
    # The same submission again is the stored message; another RET is another message.
    again = await store.submit(
        _new("X:a", id="ret-full", return_content=True), now=_T0 + 5, lifetime=_LIFETIME
    )
    _equal(again, infos[0], "the same submission with return_content=True again")
    for mid, other in (("ret-full", False), ("ret-hdrs", None), ("ret-none", True)):
        await _raises(
            StoreError,
            store.submit(_new("X:a", id=mid, return_content=other), now=_T0, lifetime=_LIFETIME),
            f"submit with the used id {mid!r} and return_content={other!r}",
        )
        _equal((await store.get_message(mid)).return_content, wanted[mid], "after refused reuse")


@_check
async def _submit_keeps_original_recipients(store: Store) -> None:
    # RFC 3461 ORCPT, one per recipient (or none): kept as given by submit and
    # submit_many, read back with the recipients by every reader, kept by a settle.
    # The texts hold what a text array or a quoted literal could get wrong.
    odd = 'rfc822;"a,b\\c{d}"@example.org'
    wide = "utf-8;j\u00f6rg@b\u00fccher.example"
    originals = {"X:a": odd, "X:c": wide}
    want = [odd, None, wide]
    await _submit(store, "X:a", "X:b", "X:c", id="orcpt-1", original_recipients=_pairs(originals))
    await store.submit_many(
        [_new("X:a", "X:b", "X:c", id="orcpt-2", original_recipients=_pairs(originals))],
        now=_T0,
        lifetime=_LIFETIME,
        routes=[["x", "x", "x"]],
    )
    await _submit(store, "X:d", id="orcpt-none")
    for mid in ("orcpt-1", "orcpt-2"):
        _equal([r.original for r in await store.recipients(mid)], want, f"recipients({mid!r})")
    _equal([r.original for r in await store.recipients("orcpt-none")], [None], "no ORCPT")
    jobs = await store.claim("x", owner="o1", now=_T0, lease=_LEASE, limit=10)
    _equal(
        {job.message.id: [r.original for r in job.recipients] for job in jobs},
        {"orcpt-1": want, "orcpt-2": want, "orcpt-none": [None]},
        "the originals of claim()'s recipients",
    )
    for job in jobs:
        await _settle_all(store, job, _R.QUEUED, now=_T0 + 1, retry_at=_T0 + 60)
    _equal([r.original for r in await store.recipients("orcpt-1")], want, "after a settle")
    # The same submission again is the stored message; other originals are another.
    await store.submit(
        _new("X:a", "X:b", "X:c", id="orcpt-1", original_recipients=_pairs(originals)),
        now=_T0 + 5,
        lifetime=_LIFETIME,
    )
    await _raises(
        StoreError,
        store.submit(
            _new("X:a", "X:b", "X:c", id="orcpt-1", original_recipients=_pairs({"X:b": odd})),
            now=_T0,
            lifetime=_LIFETIME,
        ),
        "submit with the used id 'orcpt-1' and other original recipients",
    )


def _pairs(originals: dict[str, str]) -> tuple[tuple[Address, str], ...]:
    return tuple((Address.parse(a), o) for a, o in originals.items())


@_check
async def _submit_is_idempotent(store: Store) -> None:
    message = _new("X:a", "X:b", id="m-dup")
    first = await store.submit(message, now=_T0, lifetime=_LIFETIME)
    again = await store.submit(message, now=_T0 + 50, lifetime=10.0)
    _equal(again, first, "second submit of the same message returns the first one's info")
    _equal(len(await store.recipients("m-dup")), 2, "recipients after a double submit")
    _equal((await store.counts())[_R.QUEUED], 2, "QUEUED count after a double submit")
    _equal(
        [s.info.id for s in await store.list_messages(now=_T0)],
        ["m-dup"],
        "messages listed after a double submit",
    )


@_check
async def _submit_refuses_a_reused_id(store: Store) -> None:
    original = _new("X:a", id="m-same", subject="original")
    await store.submit(original, now=_T0, lifetime=_LIFETIME)
    for variant, what in (
        (_new("X:a", id="m-same", subject="other content"), "content"),
        (_new("X:a", "X:b", id="m-same", subject="original"), "recipients"),
        (_new("X:a", id="m-same", subject="original", priority=Priority.HIGH), "priority"),
    ):
        exc = await _raises(
            StoreError,
            store.submit(variant, now=_T0, lifetime=_LIFETIME),
            f"submit with a used id and different {what}",
        )
        _expect(
            not isinstance(exc, UnknownMessage), "a reused id is StoreError, not UnknownMessage"
        )
    _equal(await store.read_content("m-same"), original.content, "content after refused reuse")
    _equal(await _states(store, "m-same"), [_R.QUEUED], "recipients after refused reuse")
    _equal((await store.counts())[_R.QUEUED], 1, "QUEUED count after refused reuse")


@_check
async def _submit_many_stores_all_in_order(store: Store) -> None:
    _equal(await store.submit_many([], now=_T0, lifetime=_LIFETIME), [], "submit_many([])")
    batch = [_new("X:a", id="b1"), _new("X:b", "Y:c", id="b2"), _new("Y:d", id="b3")]
    infos = await store.submit_many(
        batch, now=_T0, lifetime=_LIFETIME, routes=[["x"], ["x", None], None]
    )
    _equal([i.id for i in infos], ["b1", "b2", "b3"], "submit_many() infos, in order")
    for message, info in zip(batch, infos, strict=True):
        _equal(await store.get_message(message.id), info, f"get_message({message.id!r})")
        _equal(await store.read_content(message.id), message.content, "content")
    _equal([r.route for r in await store.recipients("b2")], ["x", None], "routes given per message")
    _equal(
        [(r.message_id, r.index) for r in await store.unrouted(limit=10)],
        [("b2", 1), ("b3", 0)],
        "recipients without a route wait for routing",
    )
    # Idempotent, as submit: the same lot again (say after a crash) stores nothing new.
    again = await store.submit_many(batch, now=_T0 + 5, lifetime=_LIFETIME)
    _equal(again, infos, "submit_many() of the same messages again")
    _equal((await store.counts())[_R.QUEUED], 4, "QUEUED count after the same lot twice")


@_check
async def _submit_many_is_all_or_nothing(store: Store) -> None:
    await store.submit(_new("X:a", id="used", subject="first"), now=_T0, lifetime=_LIFETIME)
    lots = [
        (
            "an id used by a different stored message",
            [_new("X:a", id="n1"), _new("X:a", id="used")],
        ),
        (
            "one id twice with different content",
            [_new("X:a", id="n1"), _new("X:a", id="twice"), _new("X:a", id="twice", subject="2")],
        ),
    ]
    for what, lot in lots:
        exc = await _raises(
            StoreError,
            store.submit_many(lot, now=_T0, lifetime=_LIFETIME),
            f"submit_many() with {what}",
        )
        _expect(not isinstance(exc, UnknownMessage), "a refused lot is StoreError")
        await _raises(UnknownMessage, store.get_message("n1"), f"n1 after a lot with {what}")
    await _raises(
        StoreError,
        store.submit_many([_new("X:a", id="n2")], now=_T0, lifetime=_LIFETIME, routes=[["x", "y"]]),
        "submit_many() with two routes for one recipient",
    )
    await _raises(UnknownMessage, store.get_message("n2"), "n2 after a refused lot")
    _equal((await store.counts())[_R.QUEUED], 1, "QUEUED count after refused lots")
    # The same id twice with the same content is one message.
    same = _new("X:a", id="same")
    infos = await store.submit_many([same, same], now=_T0, lifetime=_LIFETIME)
    _equal(infos[0], infos[1], "one message submitted twice in one lot")
    _equal((await store.counts())[_R.QUEUED], 2, "QUEUED count after a lot with a repeat")


@_check
async def _unknown_ids_raise_unknown_message(store: Store) -> None:
    await _submit(store, "X:a", id="m-known")
    missing = "m-missing"

    async def consume() -> None:
        async for _ in store.iter_content(missing):
            pass

    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("get_message", lambda: store.get_message(missing)),
        ("recipients", lambda: store.recipients(missing)),
        ("read_content", lambda: store.read_content(missing)),
        ("iter_content", consume),
        ("state_of", lambda: store.state_of(missing, now=_T0)),
        ("hold", lambda: store.hold(missing)),
        ("release", lambda: store.release(missing, now=_T0)),
        ("cancel", lambda: store.cancel(missing)),
        ("retry_now", lambda: store.retry_now(missing, now=_T0)),
        ("settle", lambda: store.settle(missing, [], owner=None, now=_T0)),
        ("unpark", lambda: store.unpark("x", missing, now=_T0)),
        ("read_inbox", lambda: store.read_inbox(missing)),
    ]
    for name, call in calls:
        exc = await _raises(UnknownMessage, call(), f"{name}() of an unknown id")
        _expect(
            isinstance(exc, StoreError) and isinstance(exc, KeyError),
            f"{name}(): UnknownMessage is both a StoreError and a KeyError",
        )


# -- routing ----------------------------------------------------------------------------


@_check
async def _submit_can_route_in_the_same_transaction(store: Store) -> None:
    info = await store.submit(
        _new("X:a", "Y:b", id="r1"), now=_T0, lifetime=_LIFETIME, routes=["x", None]
    )
    recs = await store.recipients(info.id)
    _equal([r.route for r in recs], ["x", None], "routes given at submit")
    _equal(
        [(r.message_id, r.index) for r in await store.unrouted(limit=10)],
        [("r1", 1)],
        "only the recipient without a route waits for routing",
    )
    jobs = await store.claim("x", owner="o", now=_T0, lease=60.0, limit=5)
    _equal(
        [(j.message.id, [r.index for r in j.recipients]) for j in jobs],
        [("r1", [0])],
        "a recipient routed at submit is claimable at once",
    )


@_check
async def _unrouted_pages_with_a_cursor(store: Store) -> None:
    await _submit(store, "X:a", "X:b", "X:c", id="p1", route=False)
    await _submit(store, "X:d", id="p2", route=False)
    first = await store.unrouted(limit=2)
    _equal([(r.message_id, r.index) for r in first], [("p1", 0), ("p1", 1)], "first page")
    rest = await store.unrouted(limit=10, after=("p1", 1))
    _equal([(r.message_id, r.index) for r in rest], [("p1", 2), ("p2", 0)], "page after p1#1")
    _equal(await store.unrouted(limit=10, after=("p2", 0)), [], "page after the last")


@_check
async def _unrouted_and_assign_routes(store: Store) -> None:
    m1 = await _submit(store, "X:a", "Y:b", id="m1", route=False)
    unrouted = await store.unrouted(limit=10)
    _equal(
        sorted((r.message_id, r.index) for r in unrouted),
        [("m1", 0), ("m1", 1)],
        "unrouted() after submit",
    )
    _expect(all(r.route is None for r in unrouted), "unrouted recipients have no route")
    _equal(len(await store.unrouted(limit=1)), 1, "unrouted(limit=1) length")
    await store.assign_routes([(m1.id, 0, "x")])
    _equal(
        [(r.message_id, r.index) for r in await store.unrouted(limit=10)],
        [("m1", 1)],
        "unrouted() after routing #0",
    )
    _equal([r.route for r in await store.recipients("m1")], ["x", None], "routes after assign")
    # Only QUEUED recipients are routed; a held one stays as it is.
    await _submit(store, "X:c", id="m2", route=False)
    await store.hold("m2")
    await store.assign_routes([("m2", 0, "x")])
    rec = (await store.recipients("m2"))[0]
    _equal((rec.state, rec.route), (_R.HELD, None), "assign_routes() on a HELD recipient")
    _expect(
        ("m2", 0) not in {(r.message_id, r.index) for r in await store.unrouted(limit=10)},
        "unrouted() lists only QUEUED recipients",
    )


@_check
async def _reroute_missing(store: Store) -> None:
    parked = await _submit(store, "X:p", id="m-parked")
    job = await _claim_one(store)
    await _settle_all(store, job, _R.PARKED, now=_T0)
    await _submit(store, "X:a", id="m-active")
    await _claim_one(store)
    await _submit(store, "X:q", id="m-queued")
    await _submit(store, "Y:y", id="m-other")
    n = await store.reroute_missing(["y"])
    _equal(n, 2, "reroute_missing(['y']) count (one QUEUED, one PARKED routed to x)")
    for mid in (parked.id, "m-queued"):
        rec = (await store.recipients(mid))[0]
        _equal((rec.state, rec.route), (_R.QUEUED, None), f"{mid} after reroute_missing")
    rec = (await store.recipients("m-active"))[0]
    _equal((rec.state, rec.route), (_R.ACTIVE, "x"), "an ACTIVE recipient keeps its route")
    rec = (await store.recipients("m-other"))[0]
    _equal((rec.state, rec.route), (_R.QUEUED, "y"), "a recipient of a known transport")
    _equal(
        sorted(r.message_id for r in await store.unrouted(limit=10)),
        ["m-parked", "m-queued"],
        "unrouted() after reroute_missing",
    )
    _equal(await store.reroute_missing(["y"]), 0, "reroute_missing() a second time")


@_check
async def _reroute_missing_limited(store: Store) -> None:
    # Transport x now serves only corp.example: its other queued and parked
    # recipients go back to routing, an ACTIVE one and y's stay.
    parked = await _submit(store, "X:p@example.org", id="m-parked")
    job = await _claim_one(store)
    await _settle_all(store, job, _R.PARKED, now=_T0)
    await _submit(store, "X:a@example.org", id="m-active")
    await _claim_one(store)
    await _submit(store, "X:q@example.org", "X:k@corp.example", id="m-queued")
    await _submit(store, "Y:y@example.org", id="m-other")
    # One that transport z declined (not me) before the router gave it to x: the
    # check is given the recipient whole, its refused_by with it.
    await _submit(store, "X:d@corp.example", id="m-declined")
    await store.assign_routes([("m-declined", 0, "z")])
    job = await _claim_one(store, "z")
    await store.settle(
        "m-declined",
        [RecipientUpdate(0, _R.QUEUED, keep_route=False, route=None, refused_by=("z",))],
        owner=job.owner,
        claim=job.claim,
        now=_T0,
    )
    await store.assign_routes([("m-declined", 0, "x")])
    seen: list[str] = []
    declined: list[tuple[str, ...]] = []

    def corp(recipient: RecipientRecord) -> bool:
        seen.append(recipient.address.value)
        if recipient.message_id == "m-declined":
            declined.append(recipient.refused_by)
        return recipient.address.value.endswith("@corp.example")

    n = await store.reroute_missing(["x", "y"], limited={"x": corp})
    _equal(n, 2, "reroute_missing(limited=x: corp.example) count")
    _equal(
        [(r.state, r.route) for r in await store.recipients("m-queued")],
        [(_R.QUEUED, None), (_R.QUEUED, "x")],
        "m-queued: example.org back to routing, corp.example kept on x",
    )
    rec = (await store.recipients(parked.id))[0]
    _equal((rec.state, rec.route), (_R.QUEUED, None), "a PARKED recipient of x, refused")
    rec = (await store.recipients("m-active"))[0]
    _equal((rec.state, rec.route), (_R.ACTIVE, "x"), "an ACTIVE recipient keeps its route")
    rec = (await store.recipients("m-other"))[0]
    _equal((rec.state, rec.route), (_R.QUEUED, "y"), "a recipient of a transport not limited")
    _equal("y@example.org" in seen, False, "the check asked only about x's recipients")
    _equal(declined, [("z",)], "the check is given a recipient's refused_by")
    _equal(
        await store.reroute_missing(["x", "y"], limited={"x": corp}),
        0,
        "reroute_missing(limited) a second time",
    )


# -- claims -----------------------------------------------------------------------------


@_check
async def _claim_one_job_per_message(store: Store) -> None:
    info = await _submit(store, "X:a", "Y:b", "X:c", id="m1")
    jobs = await store.claim("x", owner="o1", now=_T0 + 1, lease=_LEASE, limit=5)
    _equal(len(jobs), 1, "jobs for one message with two recipients for x")
    job = jobs[0]
    _equal((job.transport, job.owner, job.lease_until), ("x", "o1", _T0 + 1 + _LEASE), "job lease")
    _equal(job.message, info, "job.message")
    _equal([r.index for r in job.recipients], [0, 2], "recipients of the x job")
    _expect(
        all(r.state is _R.ACTIVE and r.route == "x" for r in job.recipients),
        f"claimed recipients are ACTIVE and routed to x: {job.recipients}",
    )
    _equal([r.updated_at for r in job.recipients], [_T0 + 1, _T0 + 1], "updated_at of a claim")
    _equal(await _states(store, "m1"), [_R.ACTIVE, _R.QUEUED, _R.ACTIVE], "states after claim")
    _equal(
        await store.claim("x", owner="o2", now=_T0 + 1, lease=_LEASE, limit=5),
        [],
        "a second claim of x finds nothing",
    )
    job_y = await _claim_one(store, "y", owner="o2", now=_T0 + 1)
    _equal([r.index for r in job_y.recipients], [1], "recipients of the y job")


@_check
async def _claim_respects_limit(store: Store) -> None:
    for i in range(5):
        await _submit(store, "X:a", "X:b", id=f"m{i}")
    seen: list[str] = []
    for expected in (2, 2, 1, 0):
        jobs = await store.claim("x", owner="o1", now=_T0, lease=_LEASE, limit=2)
        _equal(len(jobs), expected, "jobs returned by claim(limit=2)")
        _expect(all(len(j.recipients) == 2 for j in jobs), "each job holds both recipients")
        seen += _ids(jobs)
    _equal(sorted(seen), [f"m{i}" for i in range(5)], "messages claimed, each once")
    _equal(
        await store.claim("x", owner="o1", now=_T0, lease=_LEASE, limit=0),
        [],
        "claim(limit=0)",
    )


@_check
async def _claim_priority_order(store: Store) -> None:
    await _submit(store, "X:a", id="low", priority=Priority.LOW, now=_T0)
    await _submit(store, "X:a", id="normal", priority=Priority.NORMAL, now=_T0 + 1)
    await _submit(store, "X:a", id="high", priority=Priority.HIGH, now=_T0 + 2)
    order = [(await _claim_one(store, now=_T0 + 10)).message.id for _ in range(3)]
    _equal(order, ["high", "normal", "low"], "claim order by priority")
    # The same order within one claim, and for a flush (ignore_retry) of retried work.
    await store.release_owner("o1")
    jobs = await store.claim("x", owner="o1", now=_T0 + 10, lease=_LEASE, limit=3)
    _equal(_ids(jobs), ["high", "normal", "low"], "job order within claim(limit=3)")
    for job in jobs:
        await _settle_all(store, job, _R.QUEUED, now=_T0 + 11, retry_at=_T0 + 5000)
    _equal(
        await store.claim("x", owner="o1", now=_T0 + 12, lease=_LEASE, limit=3),
        [],
        "nothing is ready while every message waits for its retry time",
    )
    order = [
        (await _claim_one(store, now=_T0 + 12, ignore_retry=True)).message.id for _ in range(3)
    ]
    _equal(order, ["high", "normal", "low"], "flush claim order by priority")


@_check
async def _claim_passes_over_destinations(store: Store) -> None:
    # A destination is the domain after the last "@" in ASCII lower case, or the
    # whole value without one (spoolbox.model.destination).
    await _submit(store, "X:bob@slow.example", id="m1", now=_T0)
    await _submit(store, "X:carol@SLOW.Example", "X:dave@fast.example", id="m2", now=_T0 + 1)
    await _submit(store, 'X:"a@b"@slow.example', id="m3", now=_T0 + 2)
    await _submit(store, "X:erin@fast.example", id="m4", now=_T0 + 3)
    await _submit(store, "X:root", "X:Root", id="m5", now=_T0 + 4)
    # Only ASCII letters are folded (PostgreSQL: whatever the database's collation).
    await _submit(store, "X:eve@\u00c9COLE.example", id="m6", now=_T0 + 5)
    skip = {"slow.example", "root", "\u00c9cole.example"}
    jobs = await store.claim(
        "x", owner="o1", now=_T0 + 10, lease=_LEASE, limit=10, skip_destinations=skip
    )
    _equal(
        _ids(jobs),
        ["m2", "m4", "m5"],
        "claim(skip_destinations={'slow.example', 'root', '\u00c9cole.example'}): the "
        "messages with a recipient elsewhere, oldest first",
    )
    _equal(
        [[r.index for r in j.recipients] for j in jobs],
        [[1], [0], [1]],
        "the recipients each job holds (those of a skipped destination stay queued; "
        "'Root' is not 'root': only a domain is case-folded)",
    )
    _equal(
        await _states(store, "m2"),
        [_R.QUEUED, _R.ACTIVE],
        "m2's recipients after the claim that passed over slow.example",
    )
    again = await store.claim(
        "x", owner="o1", now=_T0 + 10, lease=_LEASE, limit=10, skip_destinations=skip
    )
    _equal(again, [], "the same claim again: every ready recipient is skipped or claimed")
    rest = await store.claim("x", owner="o1", now=_T0 + 10, lease=_LEASE, limit=10)
    _equal(
        _ids(rest),
        ["m1", "m2", "m3", "m5", "m6"],
        "a claim skipping nothing takes the recipients passed over, oldest first",
    )
    _equal(
        [[r.index for r in j.recipients] for j in rest],
        [[0], [0], [0], [0], [0]],
        "the recipients of the claim that skipped nothing",
    )
    for job in [*jobs, *rest]:
        await _settle_all(store, job, _R.QUEUED, now=_T0 + 11, retry_at=_T0 + 5000)
    flushed = await store.claim(
        "x",
        owner="o1",
        now=_T0 + 12,
        lease=_LEASE,
        limit=10,
        ignore_retry=True,
        skip_destinations={"slow.example"},
    )
    _equal(
        sorted((j.message.id, [r.index for r in j.recipients]) for j in flushed),
        [("m2", [1]), ("m4", [0]), ("m5", [0, 1]), ("m6", [0])],
        "a flush's claim (ignore_retry) passing over slow.example",
    )


@_check
async def _claim_oldest_ready_first(store: Store) -> None:
    await _submit(store, "X:a", id="a", send_at=_T0 + 50, now=_T0)
    await _submit(store, "X:b", id="b", send_at=_T0 + 20, now=_T0 + 1)
    await _submit(store, "X:c", id="c", now=_T0 + 2)
    order = [(await _claim_one(store, now=_T0 + 100)).message.id for _ in range(3)]
    _equal(order, ["c", "b", "a"], "claim order by ready time (send-at)")
    for mid, retry in (("d", _T0 + 300), ("e", _T0 + 200)):
        await _submit(store, "X:a", id=mid, now=_T0 + 100)
        job = await _claim_one(store, now=_T0 + 100)
        await _settle_all(store, job, _R.QUEUED, now=_T0 + 100, retry_at=retry)
    order = [(await _claim_one(store, now=_T0 + 400)).message.id for _ in range(2)]
    _equal(order, ["e", "d"], "claim order by ready time (retry time)")


@_check
async def _claim_waits_for_send_at(store: Store) -> None:
    await _submit(store, "X:a", id="later", send_at=_T0 + 100)
    for ignore_retry in (False, True):
        _equal(
            await store.claim(
                "x", owner="o1", now=_T0 + 50, lease=_LEASE, ignore_retry=ignore_retry
            ),
            [],
            f"claim before send-at (ignore_retry={ignore_retry})",
        )
        _equal(
            await store.count_claimable("x", now=_T0 + 50, ignore_retry=ignore_retry),
            0,
            f"count_claimable before send-at (ignore_retry={ignore_retry})",
        )
    _equal(await store.next_ready_at("x"), _T0 + 100, "next_ready_at() of a scheduled message")
    _equal(
        await store.state_of("later", now=_T0 + 50), MessageState.DEFERRED, "state before send-at"
    )
    job = await _claim_one(store, now=_T0 + 100)
    _equal(job.message.id, "later", "claim at the send-at time")


@_check
async def _claim_honours_retry_at(store: Store) -> None:
    await _submit(store, "X:a", "X:b", id="m1")
    job = await _claim_one(store)
    await store.settle(
        "m1",
        [
            RecipientUpdate(0, _R.QUEUED, status="4.4.1", retry_at=_T0 + 100, count_attempt=True),
            RecipientUpdate(1, _R.QUEUED, status="4.4.1", retry_at=_T0 + 200, count_attempt=True),
        ],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
    )
    _equal(
        await store.claim("x", owner="o1", now=_T0 + 50, lease=_LEASE),
        [],
        "claim before the retry time",
    )
    _equal(
        await store.count_claimable("x", now=_T0 + 50, ignore_retry=False),
        0,
        "count_claimable before the retry time",
    )
    _equal(
        await store.count_claimable("x", now=_T0 + 50, ignore_retry=True),
        1,
        "count_claimable(ignore_retry=True) before the retry time",
    )
    _equal(await store.next_ready_at("x"), _T0 + 100, "next_ready_at() of retried recipients")
    job = await _claim_one(store, now=_T0 + 150)
    _equal([r.index for r in job.recipients], [0], "claim takes only the ready recipients")
    job = await _claim_one(store, now=_T0 + 150, owner="o2", ignore_retry=True)
    _equal([r.index for r in job.recipients], [1], "a flush claim ignores the retry time")
    _equal([r.attempts for r in await store.recipients("m1")], [1, 1], "attempts after one try")


@_check
async def _claim_only_queued_routed(store: Store) -> None:
    await _submit(store, "X:a", id="unrouted", route=False)
    await _submit(store, "X:a", id="held")
    await store.hold("held")
    await _submit(store, "X:a", id="parked")
    await _settle_all(store, await _claim_one(store), _R.PARKED, now=_T0)
    await _submit(store, "X:a", id="done")
    await _settle_all(store, await _claim_one(store), _R.DELIVERED, now=_T0)
    await _submit(store, "Y:a", id="other")
    for ignore_retry in (False, True):
        _equal(
            await store.claim(
                "x", owner="o1", now=_T0 + 10, lease=_LEASE, limit=10, ignore_retry=ignore_retry
            ),
            [],
            f"claim of x with nothing QUEUED for x (ignore_retry={ignore_retry})",
        )
    _equal(await store.next_ready_at("x"), None, "next_ready_at() with nothing QUEUED for x")


# -- leases -----------------------------------------------------------------------------


@_check
async def _release_expired_leases(store: Store) -> None:
    await _submit(store, "X:a", id="m1")
    job = await _claim_one(store, now=_T0)
    _equal(await store.release_expired(now=_T0 + 10), 0, "release_expired() before expiry")
    _equal(await _states(store, "m1"), [_R.ACTIVE], "state while the lease runs")
    _equal(await store.release_expired(now=_T0 + 100), 1, "release_expired() after expiry")
    _equal(await _states(store, "m1"), [_R.QUEUED], "state after the lease expired")
    job2 = await _claim_one(store, owner="o2", now=_T0 + 100)
    _equal(job2.message.id, "m1", "an expired claim is claimable again")
    await _raises(
        LeaseLost,
        _settle_all(store, job, _R.DELIVERED, now=_T0 + 101),
        "settle by the owner whose lease expired and moved",
    )
    # A held message's expired claim goes back to HELD, not to the queue.
    await _submit(store, "X:b", id="m2", now=_T0 + 100)
    await _claim_one(store, now=_T0 + 100)
    await store.hold("m2")
    _equal(await store.release_expired(now=_T0 + 1000), 2, "release_expired() of two leases")
    _equal(await _states(store, "m2"), [_R.HELD], "an expired claim of a held message")


@_check
async def _release_owner(store: Store) -> None:
    await _submit(store, "X:a", id="m1")
    await _claim_one(store, owner="o1")
    await _submit(store, "X:b", id="m2")
    await _claim_one(store, owner="o2")
    _equal(await store.release_owner("o1"), 1, "release_owner('o1')")
    _equal(
        {m: await _states(store, m) for m in ("m1", "m2")},
        {"m1": [_R.QUEUED], "m2": [_R.ACTIVE]},
        "states after release_owner('o1')",
    )
    _equal(await store.release_owner("o1"), 0, "release_owner('o1') a second time")
    _equal(await store.release_owner("nobody"), 0, "release_owner() of an unknown owner")


@_check
async def _release_lost_claims(store: Store) -> None:
    # o1's claims of "x": m1 held (kept), m2 lost (released), m3 claimed later (its
    # lease past the bound: kept); o1's claim of "y" and o2's of "x" are not touched.
    ids = {}
    for mid, rcpt in (("m1", "X:a"), ("m2", "X:b"), ("m3", "X:c"), ("m4", "Y:d"), ("m5", "X:e")):
        await _submit(store, rcpt, id=mid)
    for mid, transport, owner, now in (
        ("m1", "x", "o1", _T0),
        ("m2", "x", "o1", _T0 + 1),
        ("m3", "x", "o1", _T0 + 5),
        ("m4", "y", "o1", _T0),
        ("m5", "x", "o2", _T0),
    ):
        job = await _claim_one(store, transport, owner=owner, now=now)
        _equal(job.message.id, mid, f"claim({transport!r}) by {owner} at {now}")
        ids[mid] = job
    bound = _T0 + 1 + _LEASE  # m2's lease ends there, m3's later
    released = await store.release_lost_claims(
        "o1", "x", leased_until=bound, keep=[("m1", ids["m1"].claim)]
    )
    _equal(released, 1, "release_lost_claims('o1', 'x') of one lost claim")
    _equal(
        {m: await _states(store, m) for m in ids},
        {
            "m1": [_R.ACTIVE],
            "m2": [_R.QUEUED],
            "m3": [_R.ACTIVE],
            "m4": [_R.ACTIVE],
            "m5": [_R.ACTIVE],
        },
        "states after release_lost_claims('o1', 'x', keeping m1's claim, leases until m2's end)",
    )
    await _raises(
        LeaseLost,
        _settle_all(store, ids["m2"], _R.DELIVERED, now=_T0 + 2),
        "settle of a released lost claim",
    )
    again = await _claim_one(store, owner="o1", now=_T0 + 2)
    _equal(again.message.id, "m2", "a released lost claim is claimable again")
    await _settle_all(store, ids["m1"], _R.DELIVERED, now=_T0 + 2)
    # A held message's lost claim goes back to HELD.
    await store.hold("m3")
    _equal(
        await store.release_lost_claims(
            "o1", "x", leased_until=_T0 + 1000, keep=[("m2", again.claim)]
        ),
        1,
        "release_lost_claims() of a held message's claim",
    )
    _equal(await _states(store, "m3"), [_R.HELD], "a lost claim of a held message")
    _equal(
        await store.release_lost_claims(
            "o1", "x", leased_until=_T0 + 1000, keep=[("m2", again.claim)]
        ),
        0,
        "release_lost_claims() a second time",
    )


@_check
async def _settle_restoring_a_claim_undone(store: Store) -> None:
    # A settle written again after a failure that undid its claim too: the recipient
    # is QUEUED, under no claim or an older one, and is settled as if still claimed.
    done = [RecipientUpdate(0, _R.DELIVERED, status="2.0.0")]
    await _submit(store, "X:a", id="m1")
    await store.settle("m1", done, owner="o1", now=_T0 + 1, claim=10**9, restoring=True)
    _equal(await _states(store, "m1"), [_R.DELIVERED], "a never-claimed recipient restored")
    # Claimed, and the claim ended (released): its token is the recipient's last.
    await _submit(store, "X:b", id="m2")
    job = await _claim_one(store, owner="o1")
    _equal(await store.release_owner("o1"), 1, "release_owner('o1')")
    await _raises(
        LeaseLost,
        store.settle("m2", done, owner="o1", now=_T0 + 2, claim=job.claim, restoring=True),
        "a restoring settle of a recipient whose last claim is its own (released since)",
    )
    later = await _claim_one(store, owner="o2", now=_T0 + 2)
    await _raises(
        LeaseLost,
        store.settle("m2", done, owner="o1", now=_T0 + 3, claim=job.claim, restoring=True),
        "a restoring settle of a recipient another claim holds",
    )
    _equal(await _states(store, "m2"), [_R.ACTIVE], "state after the refused restorings")
    # Claimed by another since and put back: its token is newer than the old claim's.
    await _settle_all(store, later, _R.QUEUED, now=_T0 + 4)
    await _raises(
        LeaseLost,
        store.settle("m2", done, owner="o1", now=_T0 + 5, claim=job.claim, restoring=True),
        "a restoring settle of a recipient claimed by another since",
    )
    _equal(await _states(store, "m2"), [_R.QUEUED], "state after a refused restoring")
    # Without restoring, a QUEUED recipient is nobody's claim to settle.
    await _submit(store, "X:c", id="m3")
    await _raises(
        LeaseLost,
        store.settle("m3", done, owner="o1", now=_T0 + 6, claim=10**9),
        "a settle with an owner of a QUEUED recipient, not restoring",
    )
    # A held message's recipient is not QUEUED: not restored.
    await store.hold("m3")
    await _raises(
        LeaseLost,
        store.settle("m3", done, owner="o1", now=_T0 + 7, claim=10**9, restoring=True),
        "a restoring settle of a held recipient",
    )


@_check
async def _renew_leases(store: Store) -> None:
    await _submit(store, "X:a", "X:b", id="m1")
    job = await _claim_one(store, now=_T0)
    renewed = await store.renew(job, now=_T0 + 20, lease=_LEASE)
    _equal(renewed.lease_until, _T0 + 20 + _LEASE, "lease_until after renew")
    _equal(
        (renewed.owner, renewed.recipients, renewed.message),
        (job.owner, job.recipients, job.message),
        "renew keeps the job",
    )
    _equal(await store.release_expired(now=_T0 + 40), 0, "release_expired() after renew")
    # Recipients settled for good do not make the renewal of the rest fail.
    await store.settle(
        "m1", [RecipientUpdate(0, _R.DELIVERED)], owner="o1", now=_T0 + 41, claim=job.claim
    )
    renewed = await store.renew(renewed, now=_T0 + 45, lease=_LEASE)
    _equal(await store.release_expired(now=_T0 + 60), 0, "release_expired() after renew #2")
    _equal(await store.release_expired(now=_T0 + 100), 1, "release_expired() after expiry")
    await _raises(
        LeaseLost,
        store.renew(renewed, now=_T0 + 100, lease=_LEASE),
        "renew after the lease expired",
    )
    await _claim_one(store, owner="o2", now=_T0 + 100)
    await _raises(
        LeaseLost,
        store.renew(renewed, now=_T0 + 100, lease=_LEASE),
        "renew after the lease moved to another owner",
    )


# -- settle -----------------------------------------------------------------------------


@_check
async def _settle_outcomes(store: Store) -> None:
    info = await _submit(store, "X:a", "X:b", "X:c", "X:d", id="m1")
    job = await _claim_one(store, now=_T0)
    now = _T0 + 5
    result = await store.settle(
        "m1",
        [
            RecipientUpdate(0, _R.DELIVERED, "2.0.0", "250 ok", count_attempt=True),
            RecipientUpdate(1, _R.FAILED, "5.1.1", "550 no such user", count_attempt=True),
            RecipientUpdate(
                2, _R.QUEUED, "4.4.1", "421 try later", retry_at=_T0 + 60, count_attempt=True
            ),
            RecipientUpdate(3, _R.QUEUED, keep_route=False, route=None, refused_by=("x",)),
        ],
        owner="o1",
        now=now,
        claim=job.claim,
    )
    _equal(result, info, "settle() returns the message's info")
    a, b, c, d = await store.recipients("m1")
    _equal(
        (a.state, a.route, a.attempts, a.status, a.diagnostic, a.updated_at, a.first_failed_at),
        (_R.DELIVERED, "x", 1, "2.0.0", "250 ok", now, None),
        "a delivered recipient",
    )
    _equal(
        (b.state, b.attempts, b.status, b.diagnostic, b.first_failed_at),
        (_R.FAILED, 1, "5.1.1", "550 no such user", None),
        "a failed recipient",
    )
    _equal(
        (c.state, c.route, c.retry_at, c.attempts, c.status, c.first_failed_at),
        (_R.QUEUED, "x", _T0 + 60, 1, "4.4.1", now),
        "a recipient to retry after a temporary failure",
    )
    _equal(
        (d.state, d.route, d.refused_by, d.attempts, d.status),
        (_R.QUEUED, None, ("x",), 0, None),
        "a recipient refused by its transport (not me)",
    )
    _equal(
        [(r.message_id, r.index) for r in await store.unrouted(limit=10)],
        [("m1", 3)],
        "a refused recipient needs routing again",
    )
    await store.assign_routes([("m1", 3, "y")])
    job = await _claim_one(store, "y", now=now)
    await store.settle(
        "m1",
        [RecipientUpdate(3, _R.QUEUED, keep_route=False, refused_by=("x", "y"))],
        owner=job.owner,
        claim=job.claim,
        now=now,
    )
    _equal(
        (await store.recipients("m1"))[3].refused_by,
        ("x", "y"),
        "refused_by is added to, without duplicates",
    )
    # A second temporary failure keeps the time of the first.
    job = await _claim_one(store, now=_T0 + 60)
    await store.settle(
        "m1",
        [RecipientUpdate(2, _R.QUEUED, "4.4.2", retry_at=_T0 + 500, count_attempt=True)],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 61,
    )
    c = (await store.recipients("m1"))[2]
    _equal(
        (c.attempts, c.status, c.diagnostic, c.first_failed_at, c.retry_at),
        (2, "4.4.2", "421 try later", now, _T0 + 500),
        "a recipient after its second temporary failure",
    )


@_check
async def _settle_checks_transitions(store: Store) -> None:
    await _submit(store, "X:a", "X:b", id="m1")
    for state in (_R.DELIVERED, _R.PARKED):
        await _raises(
            IllegalTransition,
            store.settle("m1", [RecipientUpdate(0, state)], owner=None, now=_T0),
            f"settle QUEUED -> {state}",
        )
    job = await _claim_one(store)
    await _raises(
        IllegalTransition,
        store.settle("m1", [RecipientUpdate(0, _R.ACTIVE)], owner="o1", now=_T0, claim=job.claim),
        "settle ACTIVE -> ACTIVE",
    )
    await _settle_all(store, job, _R.DELIVERED, now=_T0 + 1)
    for state in (_R.QUEUED, _R.FAILED, _R.CANCELLED):
        await _raises(
            IllegalTransition,
            store.settle("m1", [RecipientUpdate(0, state)], owner=None, now=_T0 + 2),
            f"settle DELIVERED -> {state}",
        )
    _equal(await _states(store, "m1"), [_R.DELIVERED, _R.DELIVERED], "states after refusals")
    # A legal move of a recipient that is not ACTIVE needs no owner (expiry, user).
    await _submit(store, "X:c", id="m2")
    await store.settle("m2", [RecipientUpdate(0, _R.FAILED, "4.4.7")], owner=None, now=_T0 + 3)
    _equal(await _states(store, "m2"), [_R.FAILED], "QUEUED -> FAILED without an owner")


@_check
async def _settle_checks_the_owner(store: Store) -> None:
    await _submit(store, "X:a", id="m1")
    job = await _claim_one(store, owner="o1")
    for owner in ("o2", None):
        # With the claim's token: the owner's name is what refuses these.
        await _raises(
            LeaseLost,
            store.settle(
                "m1", [RecipientUpdate(0, _R.DELIVERED)], owner=owner, now=_T0 + 1, claim=job.claim
            ),
            f"settle of o1's recipient by {owner!r}",
        )
    _equal(await _states(store, "m1"), [_R.ACTIVE], "state after refused settles")
    # Once the lease expired, its former owner may settle nothing, not even a legal move.
    await store.release_expired(now=_T0 + 100)
    for state in (_R.DELIVERED, _R.FAILED, _R.QUEUED):
        await _raises(
            LeaseLost,
            store.settle(
                "m1", [RecipientUpdate(0, state)], owner="o1", now=_T0 + 101, claim=job.claim
            ),
            f"settle ({state}) by an owner whose lease expired",
        )
    _equal(await _states(store, "m1"), [_R.QUEUED], "state after settles of a lost lease")


async def _claimed_twice_by_one_owner(store: Store) -> tuple[ClaimedJob, ClaimedJob]:
    """m1 (two recipients) claimed by o1, its lease lapsed, claimed by o1 again."""
    await _submit(store, "X:a", "X:b", id="m1")
    first = await _claim_one(store, owner="o1", now=_T0)
    _equal(await store.release_expired(now=_T0 + 100), 2, "release_expired() after expiry")
    second = await _claim_one(store, owner="o1", now=_T0 + 100)
    _expect(
        second.claim != first.claim,
        f"a second claim of the same recipients has the first one's token ({first.claim})",
    )
    return first, second


@_check
async def _settle_checks_the_claim(store: Store) -> None:
    # Fencing: a later claim of a recipient, even by the same owner, fences the earlier
    # one off (a node that stalled past its lease and claimed the message again).
    first, second = await _claimed_twice_by_one_owner(store)
    for state in (_R.DELIVERED, _R.FAILED, _R.QUEUED):
        await _raises(
            LeaseLost,
            _settle_all(store, first, state, now=_T0 + 101),
            f"settle ({state}) from an earlier claim of the same owner",
        )
    await _raises(
        LeaseLost,
        store.settle("m1", [RecipientUpdate(0, _R.DELIVERED)], owner="o1", now=_T0 + 101),
        "settle of an ACTIVE recipient by its owner without the claim's token",
    )
    _equal(await _states(store, "m1"), [_R.ACTIVE] * 2, "state after settles of the first claim")
    await _settle_all(store, second, _R.DELIVERED, now=_T0 + 102)
    _equal(await _states(store, "m1"), [_R.DELIVERED] * 2, "state after the second claim settled")
    # A token is above every earlier one of each of its recipients, not only of the
    # first: m2's #1 is claimed alone once, then both are claimed together again.
    await _submit(store, "X:c", "X:d", id="m2", now=_T0 + 200)
    both = await _claim_one(store, owner="o1", now=_T0 + 200)
    await store.settle(
        "m2", [RecipientUpdate(1, _R.QUEUED)], owner="o1", now=_T0 + 201, claim=both.claim
    )
    alone = await _claim_one(store, owner="o1", now=_T0 + 201)
    _equal([r.index for r in alone.recipients], [1], "the recipients claimed alone")
    await _raises(
        LeaseLost,
        store.settle(
            "m2", [RecipientUpdate(1, _R.DELIVERED)], owner="o1", now=_T0 + 202, claim=both.claim
        ),
        "settle of a recipient claimed again alone, from the claim before",
    )
    await store.settle(
        "m2", [RecipientUpdate(0, _R.QUEUED)], owner="o1", now=_T0 + 202, claim=both.claim
    )
    await _settle_all(store, alone, _R.QUEUED, now=_T0 + 202)
    again = await _claim_one(store, owner="o1", now=_T0 + 203)
    _equal([r.index for r in again.recipients], [0, 1], "the recipients claimed together")
    await _raises(
        LeaseLost,
        store.settle(
            "m2", [RecipientUpdate(1, _R.DELIVERED)], owner="o1", now=_T0 + 204, claim=alone.claim
        ),
        "settle of #1 from its claim before the last (#0's claims were older)",
    )
    await _settle_all(store, again, _R.DELIVERED, now=_T0 + 204)
    _equal(await _states(store, "m2"), [_R.DELIVERED] * 2, "m2 settled by its last claim")


@_check
async def _renew_checks_the_claim(store: Store) -> None:
    first, second = await _claimed_twice_by_one_owner(store)
    await _raises(
        LeaseLost,
        store.renew(first, now=_T0 + 110, lease=_LEASE),
        "renew of an earlier claim of the same owner",
    )
    renewed = await store.renew(second, now=_T0 + 110, lease=_LEASE)
    _equal(renewed.claim, second.claim, "renew keeps the claim's token")
    # Renewed, the second claim's lease runs to T0 + 140 (it ran to T0 + 130).
    _equal(await store.release_expired(now=_T0 + 139), 0, "release_expired() after renew")
    await _settle_all(store, renewed, _R.DELIVERED, now=_T0 + 139)
    _equal(await _states(store, "m1"), [_R.DELIVERED] * 2, "state after the renewed claim settled")


@_check
async def _settle_is_all_or_nothing(store: Store) -> None:
    await _submit(store, "X:a", "X:b", id="m1")
    claims = {"m1": (await _claim_one(store, owner="o1")).claim}
    await _submit(store, "X:c", "Y:d", id="m2")
    claims["m2"] = (await _claim_one(store, owner="o1")).claim
    await _claim_one(store, "y", owner="o2")
    await _submit(store, "X:e", id="taken")
    before = await _snapshot(store, "m1", "m2", "taken")
    report = _new("SMTP:alice@example.org", id="taken", subject="a different message")
    good = RecipientUpdate(0, _R.DELIVERED)
    attempts: list[tuple[str, type[BaseException], str, list[RecipientUpdate], Any]] = [
        ("m1", IllegalTransition, "an illegal update", [good, RecipientUpdate(1, _R.ACTIVE)], {}),
        ("m1", StoreError, "an unknown recipient", [good, RecipientUpdate(7, _R.FAILED)], {}),
        ("m2", LeaseLost, "another owner's recipient", [good, RecipientUpdate(1, _R.FAILED)], {}),
        ("m1", StoreError, "a report with a used id", [good], {"reports": [report]}),
        (
            "m1",
            StoreError,
            "an empty inbound report",
            [good],
            {"inbox_reports": [InboundMessage("spooler", b"")]},
        ),
    ]
    for mid, exc_type, what, updates, extra in attempts:
        await _raises(
            exc_type,
            store.settle(mid, updates, owner="o1", now=_T0 + 1, claim=claims[mid], **extra),
            f"settle with {what}",
        )
        _equal(await _snapshot(store, "m1", "m2", "taken"), before, f"store after {what}")


@_check
async def _settle_enqueues_reports(store: Store) -> None:
    report, inbound = await _fail_with_reports(store)
    info = await store.get_message("r1")
    _equal(
        (info.submitted_at, info.expires_at, info.is_report, info.subject),
        (_T0 + 5, _T0 + 5 + _LIFETIME, True, "Undelivered"),
        "a report submitted by settle (it inherits the message's queue lifetime)",
    )
    _equal(await _states(store, "r1"), [_R.QUEUED], "the report's recipient")
    _equal(await store.read_content("r1"), report.content, "the report's content")
    inbox = await store.list_inbox()
    _equal([e.subject for e in inbox], ["Delivery report"], "inbox after settle")
    _equal(await store.read_inbox(inbox[0].id), inbound.content, "inbox report content")
    counts = await store.counts()
    _equal((counts[_R.FAILED], counts[_R.QUEUED]), (1, 1), "counts after settle with a report")


@_check
async def _settle_of_a_held_message(store: Store) -> None:
    await _submit(store, "X:a", id="m1")
    job = await _claim_one(store)
    info = await store.hold("m1")
    _expect(info.held, "hold() returns the info with held=True")
    _equal(await _states(store, "m1"), [_R.ACTIVE], "hold leaves an ACTIVE recipient")
    await _settle_all(store, job, _R.QUEUED, now=_T0 + 1)
    _equal(await _states(store, "m1"), [_R.HELD], "settle QUEUED of a held message")
    _equal(await store.state_of("m1", now=_T0 + 1), MessageState.HOLD, "state of a held message")
    released = await store.release("m1", now=_T0 + 2)
    _expect(not released.held, "release() returns the info with held=False")
    _equal(await _states(store, "m1"), [_R.QUEUED], "state after release")
    _equal((await _claim_one(store, now=_T0 + 2)).message.id, "m1", "claim after release")


@_check
async def _a_held_message_stays_held(store: Store) -> None:
    # Recipients parked while their message is held do not escape the hold.
    await _submit(store, "X:a", "Y:b", id="m1")
    job_x = await _claim_one(store, "x", owner="o1")
    job_y = await _claim_one(store, "y", owner="o2")
    await store.hold("m1")
    await _settle_all(store, job_x, _R.PARKED, now=_T0 + 1)
    await _settle_all(store, job_y, _R.PARKED, now=_T0 + 1)
    _equal(await _states(store, "m1"), [_R.PARKED, _R.PARKED], "parked while held")
    _equal(await store.unpark("x", None, now=_T0 + 2), 1, "unpark('x') of a held message")
    _equal(await _states(store, "m1"), [_R.HELD, _R.PARKED], "unparked while held")
    _equal(await store.reroute_missing(["x"]), 1, "reroute_missing(['x']) of a held message")
    recs = await store.recipients("m1")
    _equal(
        [(r.state, r.route) for r in recs],
        [(_R.HELD, "x"), (_R.HELD, None)],
        "rerouted while held",
    )
    for transport in ("x", "y"):
        _equal(
            await store.claim(
                transport, owner="o3", now=_T0 + 3, lease=_LEASE, limit=5, ignore_retry=True
            ),
            [],
            f"claim of {transport} while the message is held",
        )
    await store.release("m1", now=_T0 + 4)
    _equal(await _states(store, "m1"), [_R.QUEUED, _R.QUEUED], "after release")
    _equal(
        [(r.message_id, r.index) for r in await store.unrouted(limit=5)],
        [("m1", 1)],
        "the rerouted recipient needs routing after release",
    )


# -- user operations --------------------------------------------------------------------


@_check
async def _hold_and_release(store: Store) -> None:
    await _submit(store, "X:a", "X:b", "X:c", "X:d", id="m1")
    job = await _claim_one(store)
    await store.settle(
        "m1",
        [
            RecipientUpdate(0, _R.DELIVERED),
            RecipientUpdate(1, _R.PARKED),
            RecipientUpdate(2, _R.QUEUED, retry_at=_T0 + 500),
        ],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
    )
    info = await store.hold("m1")
    _expect(info.held and (await store.get_message("m1")).held, "held flag after hold()")
    _equal(
        await _states(store, "m1"),
        [_R.DELIVERED, _R.HELD, _R.HELD, _R.ACTIVE],
        "hold: PARKED and QUEUED become HELD; DELIVERED and ACTIVE stay",
    )
    _equal(await store.unpark("x", "m1", now=_T0 + 2), 0, "unpark() of a held message")
    _equal(
        await store.claim("x", owner="o2", now=_T0 + 600, lease=_LEASE, ignore_retry=True),
        [],
        "claim of a held message",
    )
    info = await store.release("m1", now=_T0 + 10)
    _expect(not info.held and not (await store.get_message("m1")).held, "held flag after release()")
    _equal(
        await _states(store, "m1"),
        [_R.DELIVERED, _R.QUEUED, _R.QUEUED, _R.ACTIVE],
        "release: HELD become QUEUED",
    )
    job = await _claim_one(store, owner="o2", now=_T0 + 10)
    _equal([r.index for r in job.recipients], [1, 2], "released recipients are ready at once")


@_check
async def _cancel(store: Store) -> None:
    await _submit(store, "X:a", "X:b", "X:c", "X:d", id="m1")
    job = await _claim_one(store)
    await store.settle(
        "m1",
        [
            RecipientUpdate(0, _R.DELIVERED),
            RecipientUpdate(2, _R.PARKED),
            RecipientUpdate(3, _R.QUEUED, retry_at=_T0 + 100),
        ],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
    )
    active = await store.cancel("m1")
    _equal(
        [(r.message_id, r.index, r.state) for r in active],
        [("m1", 1, _R.ACTIVE)],
        "cancel() returns the ACTIVE recipients",
    )
    _equal(
        await _states(store, "m1"),
        [_R.DELIVERED, _R.ACTIVE, _R.CANCELLED, _R.CANCELLED],
        "cancel: the rest that is not done is CANCELLED",
    )
    await store.settle(
        "m1", [RecipientUpdate(1, _R.CANCELLED)], owner="o1", now=_T0 + 2, claim=job.claim
    )
    _equal(await store.state_of("m1", now=_T0 + 2), MessageState.SENT, "state after cancel")
    _equal(await store.cancel("m1"), [], "cancel() a second time")
    await _submit(store, "X:a", "Y:b", id="m2")
    await store.hold("m2")
    _equal(await store.cancel("m2"), [], "cancel() of a held message")
    _equal(await _states(store, "m2"), [_R.CANCELLED] * 2, "a held message after cancel")
    _equal(await store.state_of("m2", now=_T0), MessageState.CANCELLED, "its state")


@_check
async def _retry_now(store: Store) -> None:
    await _submit(store, "X:a", "X:b", id="m1")
    job = await _claim_one(store)
    await store.settle(
        "m1",
        [
            RecipientUpdate(0, _R.QUEUED, retry_at=_T0 + 100),
            RecipientUpdate(1, _R.QUEUED, retry_at=_T0 + 200),
        ],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
    )
    _equal(await store.retry_now("m1", now=_T0 + 5), 2, "retry_now() count")
    job = await _claim_one(store, now=_T0 + 5)
    _equal([r.index for r in job.recipients], [0, 1], "claim right after retry_now()")
    _equal(await store.retry_now("m1", now=_T0 + 5), 0, "retry_now() with nothing waiting")


@_check
async def _retry_transport(store: Store) -> None:
    await _submit(store, "X:a", "X:b", "X:c", id="m1")
    job = await _claim_one(store)
    await store.settle(
        "m1",
        [
            RecipientUpdate(0, _R.QUEUED, retry_at=_T0 + 100),
            RecipientUpdate(1, _R.QUEUED, retry_at=_T0 + 200),
            RecipientUpdate(2, _R.PARKED),
        ],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
    )
    await _submit(store, "Y:c", id="m2")
    await _settle_all(store, await _claim_one(store, "y"), _R.QUEUED, now=_T0, retry_at=_T0 + 100)
    await _submit(store, "X:d", id="m3", send_at=_T0 + 500)
    _equal(await store.retry_transport("x", now=_T0 + 5), 2, "retry_transport('x') count")
    jobs = await store.claim("x", owner="o1", now=_T0 + 5, lease=_LEASE, limit=10)
    _equal(
        [(j.message.id, [r.index for r in j.recipients]) for j in jobs],
        [("m1", [0, 1])],
        "claim after retry_transport: retried recipients only, send-at times stay",
    )
    _equal(await _states(store, "m1"), [_R.ACTIVE, _R.ACTIVE, _R.PARKED], "parked stays parked")
    _equal(
        await store.claim("y", owner="o1", now=_T0 + 5, lease=_LEASE),
        [],
        "retry_transport('x') leaves other transports waiting",
    )
    _equal(await store.retry_transport("x", now=_T0 + 5), 0, "retry_transport() again")


@_check
async def _unpark_one_and_all(store: Store) -> None:
    await _submit(store, "X:a", "Y:b", id="m1")
    await _submit(store, "X:c", id="m2")
    for transport in ("x", "y"):
        for job in await store.claim(transport, owner="o1", now=_T0, lease=_LEASE, limit=5):
            await _settle_all(store, job, _R.PARKED, now=_T0 + 1)
    _equal(
        (await _states(store, "m1"), await _states(store, "m2")),
        ([_R.PARKED, _R.PARKED], [_R.PARKED]),
        "states after parking",
    )
    _equal(await store.state_of("m1", now=_T0 + 1), MessageState.DEFERRED, "a parked message")
    _equal(await store.count_claimable("x", now=_T0 + 1, ignore_retry=True), 0, "parked count")
    _equal(await store.unpark("x", "m1", now=_T0 + 2), 1, "unpark('x', 'm1')")
    _equal(await _states(store, "m1"), [_R.QUEUED, _R.PARKED], "m1 after unpark('x', 'm1')")
    _equal(await _states(store, "m2"), [_R.PARKED], "m2 after unpark('x', 'm1')")
    _equal(await store.unpark("x", None, now=_T0 + 3), 1, "unpark('x', None)")
    _equal(await _states(store, "m2"), [_R.QUEUED], "m2 after unpark('x', None)")
    _equal(await store.unpark("y", None, now=_T0 + 3), 1, "unpark('y', None)")
    _equal(await store.unpark("y", None, now=_T0 + 3), 0, "unpark('y', None) a second time")
    rec = (await store.recipients("m1"))[1]
    _equal((rec.state, rec.retry_at, rec.route), (_R.QUEUED, 0.0, "y"), "an unparked recipient")
    _equal(await store.count_claimable("x", now=_T0 + 3, ignore_retry=False), 2, "ready for x")


@_check
async def _expired_recipients(store: Store) -> None:
    await _submit(store, "X:a", "X:b", "X:c", "X:d", id="short", lifetime=100.0)
    job = await _claim_one(store)
    await store.settle(  # index 0 stays ACTIVE
        "short",
        [
            RecipientUpdate(1, _R.PARKED),
            RecipientUpdate(2, _R.DELIVERED),
            RecipientUpdate(3, _R.QUEUED),
        ],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
    )
    await _submit(store, "X:e", id="held", lifetime=100.0)
    await store.hold("held")
    await _submit(store, "X:f", id="long")
    _equal(await store.expired(now=_T0 + 50, limit=10), [], "expired() before any expiry")
    found = await store.expired(now=_T0 + 200, limit=10)
    _equal(
        sorted((r.message_id, r.index, r.state) for r in found),
        [("held", 0, _R.HELD), ("short", 1, _R.PARKED), ("short", 3, _R.QUEUED)],
        "expired(): the non-terminal, non-ACTIVE recipients of expired messages",
    )
    _equal(len(await store.expired(now=_T0 + 200, limit=1)), 1, "expired(limit=1)")
    for r in found:
        await store.settle(
            r.message_id, [RecipientUpdate(r.index, _R.FAILED, "4.4.7")], owner=None, now=_T0 + 200
        )
    _equal(await store.expired(now=_T0 + 200, limit=10), [], "expired() after failing them")


# -- reading ----------------------------------------------------------------------------


@_check
async def _counts_are_maintained(store: Store) -> None:
    zero = dict.fromkeys(RecipientState, 0)
    _equal(await store.counts(), zero, "counts() of an empty store")
    await _submit(store, "X:a", "X:b", "X:c", id="m1")
    job = await _claim_one(store)
    await store.settle(
        "m1",
        [
            RecipientUpdate(0, _R.DELIVERED),
            RecipientUpdate(1, _R.FAILED),
            RecipientUpdate(2, _R.PARKED),
        ],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
    )
    await _submit(store, "X:d", "Y:e", id="m2")
    await _claim_one(store, now=_T0 + 1)  # m2, index 0
    await store.hold("m2")  # index 1 HELD
    expected = zero | {_R.DELIVERED: 1, _R.FAILED: 1, _R.PARKED: 1, _R.ACTIVE: 1, _R.HELD: 1}
    _equal(await store.counts(), expected, "counts() after claims, settles and hold")
    await store.cancel("m2")
    await store.unpark("x", None, now=_T0 + 2)
    expected |= {_R.HELD: 0, _R.CANCELLED: 1, _R.PARKED: 0, _R.QUEUED: 1}
    _equal(await store.counts(), expected, "counts() after cancel and unpark")


@_check
async def _list_messages(store: Store) -> None:
    # Submitted out of id order; m2, m4 and m5 go to their own transports.
    for mid, rcpt in (("m3", "X:a"), ("m1", "X:a"), ("m5", "Z:a"), ("m2", "Y:a"), ("m4", "X:a")):
        await _submit(store, rcpt, id=mid)
    listed = await store.list_messages(now=_T0)
    _equal([s.info.id for s in listed], ["m1", "m2", "m3", "m4", "m5"], "list_messages() order")
    for s in listed:
        _equal(s.info, await store.get_message(s.info.id), "summary info")
        _equal(list(s.recipients), await store.recipients(s.info.id), "summary recipients")
        _equal(s.state, MessageState.QUEUED, "summary state")
    pages: list[list[str]] = []
    after: str | None = None
    while page := await store.list_messages(now=_T0, limit=2, after=after):
        pages.append([s.info.id for s in page])
        after = page[-1].info.id
    _equal(pages, [["m1", "m2"], ["m3", "m4"], ["m5"]], "pages of list_messages(limit=2)")
    await _claim_one(store, "y")  # m2 ACTIVE
    await store.hold("m4")
    await _settle_all(store, await _claim_one(store, "z"), _R.DELIVERED, now=_T0)  # m5 SENT
    expected = {
        MessageState.QUEUED: ["m1", "m3"],
        MessageState.ACTIVE: ["m2"],
        MessageState.HOLD: ["m4"],
        MessageState.SENT: ["m5"],
        MessageState.DEFERRED: [],
        MessageState.FAILED: [],
        MessageState.CANCELLED: [],
    }
    for st, ids in expected.items():
        _equal(
            [s.info.id for s in await store.list_messages(state=st, now=_T0)],
            ids,
            f"list_messages(state={st})",
        )
    _equal(
        [s.info.id for s in await store.list_messages(state=MessageState.QUEUED, limit=1, now=_T0)],
        ["m1"],
        "list_messages(state=QUEUED, limit=1)",
    )
    _equal(
        [
            s.info.id
            for s in await store.list_messages(state=MessageState.QUEUED, after="m1", now=_T0)
        ],
        ["m3"],
        "list_messages(state=QUEUED, after='m1')",
    )
    _equal(
        [s.state for s in await store.list_messages(after="m3", now=_T0)],
        [MessageState.HOLD, MessageState.SENT],
        "states in a listing",
    )


@_check
async def _state_of_derivations(store: Store) -> None:
    async def state(mid: str, now: float = _T0 + 10) -> MessageState:
        return await store.state_of(mid, now=now)

    await _submit(store, "X:a", id="queued")
    _equal(await state("queued"), MessageState.QUEUED, "a new message")
    await _submit(store, "X:a", id="scheduled", send_at=_T0 + 100)
    _equal(await state("scheduled"), MessageState.DEFERRED, "a message before its send-at")
    _equal(await state("scheduled", _T0 + 100), MessageState.QUEUED, "the same at its send-at")
    await store.hold("queued")
    _equal(await state("queued"), MessageState.HOLD, "a held message")
    await store.cancel("queued")
    _equal(await state("queued"), MessageState.CANCELLED, "a cancelled message")

    await _submit(store, "Y:a", "Y:b", id="mixed")
    job = await _claim_one(store, "y")
    _equal(await state("mixed"), MessageState.ACTIVE, "a message in a transport's hands")
    await store.settle(
        "mixed",
        [RecipientUpdate(0, _R.DELIVERED), RecipientUpdate(1, _R.QUEUED, retry_at=_T0 + 60)],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
    )
    _equal(await state("mixed"), MessageState.DEFERRED, "waiting on a retry time")
    _equal(await state("mixed", _T0 + 60), MessageState.QUEUED, "the retry time has come")
    job = await _claim_one(store, "y", now=_T0 + 60)
    await _settle_all(store, job, _R.PARKED, now=_T0 + 61)
    _equal(await state("mixed", _T0 + 61), MessageState.DEFERRED, "waiting on a parked recipient")
    await store.unpark("y", "mixed", now=_T0 + 62)
    job = await _claim_one(store, "y", now=_T0 + 62)
    await _settle_all(store, job, _R.FAILED, now=_T0 + 63)
    _equal(await state("mixed", _T0 + 63), MessageState.SENT, "one delivered, one failed")

    await _submit(store, "Z:a", "Z:b", id="failed")
    job = await _claim_one(store, "z")
    await store.settle(
        "failed",
        [RecipientUpdate(0, _R.FAILED), RecipientUpdate(1, _R.CANCELLED)],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
    )
    _equal(await state("failed"), MessageState.FAILED, "one failed, one cancelled")


# -- content ----------------------------------------------------------------------------


async def _chunks(store: Store, message_id: str, chunk_size: int) -> list[bytes]:
    return [c async for c in store.iter_content(message_id, chunk_size=chunk_size)]


def _check_chunks(chunks: list[bytes], content: bytes, chunk_size: int, what: str) -> None:
    _equal(b"".join(chunks) == content, True, f"{what}: the chunks join into the content")
    _expect(
        all(0 < len(c) <= chunk_size for c in chunks),
        f"{what}: chunks are non-empty and at most {chunk_size} bytes: "
        f"{sorted({len(c) for c in chunks})}",
    )
    _expect(
        len(chunks) >= -(-len(content) // chunk_size),
        f"{what}: {len(chunks)} chunks cannot hold {len(content)} bytes",
    )


@_check
async def _content_round_trip(store: Store) -> None:
    # Every byte value but NUL, CRLF and bare LF, 8-bit text: stored as given.
    body = bytes(range(1, 256)) * 3 + b"\r\nline\nend\r\n"
    small = _new("X:a", id="small", content=_content("bytes", body))
    await store.submit(small, now=_T0, lifetime=_LIFETIME)
    _equal(await store.read_content("small"), small.content, "read_content() of small content")
    for size in (1, 7, 65536):
        chunks = await _chunks(store, "small", size)
        _check_chunks(chunks, small.content, size, f"iter_content(chunk_size={size})")


@_check
async def _large_content_round_trip(store: Store) -> None:
    rng = random.Random(5)
    body = rng.randbytes(5 * 1024 * 1024).replace(b"\x00", b"\x01")
    big = _new("X:a", id="big", content=_content("big", body))
    info = await store.submit(big, now=_T0, lifetime=_LIFETIME)
    _equal(info.size, len(big.content), "size of a 5 MB message")
    _expect(await store.read_content("big") == big.content, "read_content() of 5 MB differs")
    for size in (65536, 1_000_003, 10 * 1024 * 1024):
        _check_chunks(await _chunks(store, "big", size), big.content, size, f"iter_content({size})")


# -- inbox and provider state -----------------------------------------------------------


@_check
async def _deliver_inbound_with_profile_updates(store: Store) -> None:
    await store.profile_update("imap", {"old": 1, "uid": 41})
    content = _content("inbound", b"8-bit \xe9\r\n")
    message = InboundMessage(
        transport="imap",
        content=content,
        sender="bob@example.org",
        recipients=("me@example.org", "you@example.org"),
        received_at=_T0,
        remote_id="7:42",
    )
    entry = await store.deliver_inbound(
        message, profile_updates={"imap": {"uid": 42, "old": None}, "pop": {"seen": ["a", "b"]}}
    )
    _expect(isinstance(entry.id, str) and bool(entry.id), f"inbox entry id {entry.id!r}")
    _equal(
        (
            entry.transport,
            entry.sender,
            entry.recipients,
            entry.received_at,
            entry.size,
            entry.subject,
            entry.remote_id,
        ),
        (
            "imap",
            "bob@example.org",
            ("me@example.org", "you@example.org"),
            _T0,
            len(content),
            "inbound",
            "7:42",
        ),
        "inbox entry fields",
    )
    _equal(await store.read_inbox(entry.id), content, "read_inbox()")
    _equal(await store.list_inbox(), [entry], "list_inbox()")
    _equal(await store.profile_get("imap"), {"uid": 42}, "profile section after delivery")
    _equal(await store.profile_get("pop"), {"seen": ["a", "b"]}, "a second section")
    # A delivery that fails commits neither the message nor the state updates.
    await _raises(
        StoreError,
        store.deliver_inbound(InboundMessage("imap", b""), profile_updates={"imap": {"uid": 43}}),
        "deliver_inbound() of an empty message",
    )
    _equal(await store.profile_get("imap"), {"uid": 42}, "profile after a failed delivery")
    _equal(await store.list_inbox(), [entry], "inbox after a failed delivery")


@_check
async def _deliver_inbound_many_is_all_or_nothing(store: Store) -> None:
    _equal(await store.deliver_inbound_many([]), [], "deliver_inbound_many([])")
    await store.profile_update("imap", {"last_uid": 1, "keep": "k"})
    items: list[tuple[InboundMessage, dict[str, dict[str, Any]] | None]] = [
        (
            InboundMessage("imap", _content(f"m{i}"), received_at=_T0 + i, remote_id=f"7:{i}"),
            {"imap": {"last_uid": i, "uidvalidity": 7}},
        )
        for i in (2, 3, 4)
    ]
    items.append((InboundMessage("imap", _content("m5"), received_at=_T0 + 5), None))
    entries = await store.deliver_inbound_many(items)
    _equal(
        [(e.subject, e.remote_id, e.size) for e in entries],
        [(f"m{i}", f"7:{i}" if i < 5 else None, len(_content(f"m{i}"))) for i in (2, 3, 4, 5)],
        "deliver_inbound_many() entries, in the order of the items",
    )
    _equal(len({e.id for e in entries}), 4, "deliver_inbound_many() gives distinct ids")
    _equal(
        sorted(e.id for e in await store.list_inbox()),
        sorted(e.id for e in entries),
        "list_inbox() after deliver_inbound_many()",
    )
    for e in entries:
        _equal(await store.read_inbox(e.id), _content(e.subject), f"content of {e.subject}")
    _equal(
        await store.profile_get("imap"),
        {"last_uid": 4, "uidvalidity": 7, "keep": "k"},
        "profile updates merged in order (the last one wins)",
    )
    # One bad item (no content) fails the whole batch: nothing of it is committed.
    bad = [
        (InboundMessage("imap", _content("m6")), {"imap": {"last_uid": 6}}),
        (InboundMessage("imap", b""), {"imap": {"last_uid": 7}}),
        (InboundMessage("imap", _content("m8")), {"imap": {"last_uid": 8}}),
    ]
    await _raises(StoreError, store.deliver_inbound_many(bad), "a batch with an empty message")
    _equal(len(await store.list_inbox()), 4, "inbox after a failed deliver_inbound_many()")
    _equal(
        (await store.profile_get("imap"))["last_uid"],
        4,
        "profile after a failed deliver_inbound_many()",
    )


@_check
async def _inbox_listing(store: Store) -> None:
    entries = [
        await store.deliver_inbound(InboundMessage("pop", _content(f"n{i}"), received_at=_T0 + i))
        for i in range(5)
    ]
    ids = sorted(e.id for e in entries)
    _equal(len(set(ids)), 5, "inbox ids are unique")
    _equal([e.id for e in await store.list_inbox()], ids, "list_inbox() is in id order")
    pages: list[list[str]] = []
    after: str | None = None
    while page := await store.list_inbox(limit=2, after=after):
        pages.append([e.id for e in page])
        after = page[-1].id
    _equal(pages, [ids[0:2], ids[2:4], ids[4:]], "pages of list_inbox(limit=2)")
    for e in entries:
        _equal(await store.read_inbox(e.id), _content(e.subject), f"content of {e.subject}")


@_check
async def _profile_update_merges(store: Store) -> None:
    _equal(await store.profile_get("none"), {}, "an unknown section")
    await store.profile_update("s", {"a": 1, "b": {"c": [1, 2]}, "t": "text"})
    await store.profile_update("s", {"a": None, "d": True, "missing": None})
    await store.profile_update("other", {"a": 2})
    section = await store.profile_get("s")
    _equal(section, {"b": {"c": [1, 2]}, "t": "text", "d": True}, "a merged section")
    section["b"]["c"].append(3)
    section["new"] = 1
    _equal(
        await store.profile_get("s"),
        {"b": {"c": [1, 2]}, "t": "text", "d": True},
        "profile_get() returns a copy",
    )
    _equal(await store.profile_get("other"), {"a": 2}, "sections are independent")


# -- scheduling helpers -----------------------------------------------------------------


@_check
async def _next_ready_at(store: Store) -> None:
    _equal(await store.next_ready_at("x"), None, "next_ready_at() of an empty store")
    await _submit(store, "X:a", id="low", priority=Priority.LOW, send_at=_T0 + 500)
    await _submit(store, "X:b", id="high", priority=Priority.HIGH)
    job = await _claim_one(store)
    _equal(job.message.id, "high", "the ready message is claimed first")
    _equal(await store.next_ready_at("x"), _T0 + 500, "an ACTIVE recipient is not waiting")
    await _settle_all(store, job, _R.QUEUED, now=_T0 + 1, retry_at=_T0 + 300)
    _equal(await store.next_ready_at("x"), _T0 + 300, "the earliest over priorities")
    await store.hold("high")
    _equal(await store.next_ready_at("x"), _T0 + 500, "a held recipient is not waiting")
    await _submit(store, "Y:a", id="now")
    ready = await store.next_ready_at("y")
    _expect(ready is not None and ready <= _T0, f"a recipient ready now: next_ready_at={ready}")
    _equal(await store.next_ready_at("z"), None, "a transport with nothing queued")


@_check
async def _count_claimable(store: Store) -> None:
    await _submit(store, "X:d", id="retry")
    await _settle_all(store, await _claim_one(store), _R.QUEUED, now=_T0, retry_at=_T0 + 200)
    await _submit(store, "X:a", "X:b", id="ready")  # two recipients, one message
    await _submit(store, "X:c", id="scheduled", send_at=_T0 + 100)
    await _submit(store, "X:e", id="held")
    await store.hold("held")
    await _submit(store, "Y:f", id="other")
    cases = [
        (_T0, False, 1),
        (_T0, True, 2),
        (_T0 + 100, False, 2),
        (_T0 + 100, True, 3),
        (_T0 + 200, False, 3),
    ]
    for now, ignore_retry, expected in cases:
        _equal(
            await store.count_claimable("x", now=now, ignore_retry=ignore_retry),
            expected,
            f"count_claimable(now={now}, ignore_retry={ignore_retry})",
        )
    jobs = await store.claim("x", owner="o1", now=_T0 + 100, lease=_LEASE, limit=10)
    _equal(len(jobs), 2, "claim returns as many jobs as count_claimable said")


# -- retention ----------------------------------------------------------------------------

_S, _F_, _C = MessageState.SENT, MessageState.FAILED, MessageState.CANCELLED
_ALL_FINISHED = {_S: float("inf"), _F_: float("inf"), _C: float("inf")}


async def _finish(store: Store, mid: str, state: RecipientState, *, now: float) -> None:
    """Claim every recipient of ``mid`` (on x) and settle them in ``state`` at ``now``."""
    for job in await store.claim("x", owner="o1", now=now, lease=_LEASE, limit=100):
        if job.message.id == mid:
            await _settle_all(store, job, state, now=now)
        else:  # pragma: no cover - the checks claim one message at a time
            raise AssertionError(f"claim at {now} returned {job.message.id}, not {mid}")


@_check
async def _purge_removes_finished_messages_after_their_cutoff(store: Store) -> None:
    for mid, state, at in (("sent", _R.DELIVERED, 10), ("failed", _R.FAILED, 20)):
        await _submit(store, "X:a", id=mid)
        await _finish(store, mid, state, now=_T0 + at)
    await _submit(store, "X:a", "X:b", id="cancelled")
    await store.cancel("cancelled")
    cancelled_at = max(r.updated_at for r in await store.recipients("cancelled"))
    _equal(
        await store.purge(finished_before={_S: _T0 + 10}, limit=10),
        [],
        "purge at the exact finished time",
    )
    _equal(
        await store.purge(finished_before={_S: _T0 + 11}, limit=10),
        ["sent"],
        "purge of SENT finished before the cutoff",
    )
    _expect(await _gone(store, "sent"), "a purged message is still readable by get_message")
    await _raises(UnknownMessage, store.read_content("sent"), "read_content of a purged message")
    _equal(
        await store.purge(finished_before={_S: _T0 + 1000}, limit=10),
        [],
        "purge of SENT leaves FAILED and CANCELLED messages",
    )
    _equal(
        await store.purge(finished_before={_F_: _T0 + 1000}, limit=10),
        ["failed"],
        "purge of FAILED",
    )
    _equal(
        await store.purge(finished_before={_C: cancelled_at + 1}, limit=10),
        ["cancelled"],
        "purge of CANCELLED",
    )
    _equal(sum((await store.counts()).values()), 0, "counts() after every message was purged")
    _equal(await store.list_messages(now=_T0 + 1000), [], "list_messages() after the purges")


@_check
async def _purge_never_removes_an_unfinished_message(store: Store) -> None:
    await _submit(store, "X:a", "X:b", id="half")
    job = await _claim_one(store, now=_T0)
    await store.settle(
        "half",
        [RecipientUpdate(0, _R.DELIVERED), RecipientUpdate(1, _R.QUEUED, retry_at=_T0 + 50)],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
    )
    await _submit(store, "X:a", id="parked")
    await _finish(store, "parked", _R.PARKED, now=_T0 + 2)
    await _submit(store, "X:a", id="active")
    await _claim_one(store, now=_T0 + 3)
    await _submit(store, "X:a", id="queued")
    await _submit(store, "Y:a", id="unrouted", route=False)
    await _submit(store, "X:a", id="held")
    await store.hold("held")
    ids = ["active", "half", "held", "parked", "queued", "unrouted"]
    before = await _snapshot(store, *ids)
    _equal(
        await store.purge(finished_before=_ALL_FINISHED, limit=100),
        [],
        "purge of every finished queue with no finished message",
    )
    _equal(await _snapshot(store, *ids), before, "the unfinished messages after a purge")
    for queue in (
        MessageState.QUEUED,
        MessageState.ACTIVE,
        MessageState.DEFERRED,
        MessageState.HOLD,
    ):
        await _raises(
            StoreError,
            store.purge(finished_before={queue: float("inf")}, limit=100),
            f"purge naming the unfinished queue {queue}",
        )
    _equal(await _snapshot(store, *ids), before, "the unfinished messages after refused purges")


@_check
async def _purge_takes_at_most_limit(store: Store) -> None:
    for i in range(5):
        await _submit(store, "X:a", id=f"m{i}")
        await _finish(store, f"m{i}", _R.DELIVERED, now=_T0 + i)
    sizes = []
    while gone := await store.purge(finished_before={_S: _T0 + 100}, limit=2):
        sizes.append(len(gone))
        _expect(len(sizes) < 10, "purge(limit=2) keeps returning ids: nothing is deleted")
    _equal(sizes, [2, 2, 1], "messages per purge(limit=2) until none are left")
    await _raises(StoreError, store.purge(finished_before={_S: _T0}, limit=0), "purge(limit=0)")


@_check
async def _purge_decides_a_message_by_all_its_recipients(store: Store) -> None:
    # "mixed": one recipient delivered at T0 + 1, the other failed at T0 + 50: SENT,
    # finished at T0 + 50.  "fc": failed, then the other cancelled: FAILED.
    await _submit(store, "X:a", "X:b", id="mixed")
    job = await _claim_one(store, now=_T0)
    await store.settle(
        "mixed",
        [RecipientUpdate(0, _R.DELIVERED), RecipientUpdate(1, _R.QUEUED, retry_at=_T0 + 2)],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 1,
    )
    await _settle_all(store, await _claim_one(store, now=_T0 + 40), _R.FAILED, now=_T0 + 50)
    await _submit(store, "X:a", "X:b", id="fc")
    job = await _claim_one(store, now=_T0 + 60)
    await store.settle(
        "fc",
        [RecipientUpdate(0, _R.FAILED), RecipientUpdate(1, _R.QUEUED, retry_at=_T0 + 500)],
        owner=job.owner,
        claim=job.claim,
        now=_T0 + 60,
    )
    await store.cancel("fc")
    await _submit(store, "X:a", id="plain")
    await _finish(store, "plain", _R.DELIVERED, now=_T0 + 5)
    _equal(
        await store.purge(finished_before={_S: _T0 + 10}, limit=1),
        ["plain"],
        "purge(limit=1) of SENT between mixed's first and last finished recipient: "
        "a message finished after the cutoff takes no purge's place",
    )
    _equal(
        await store.purge(finished_before={_S: _T0 + 10}, limit=10),
        [],
        "purge of SENT between a message's first and last finished recipient",
    )
    _equal(
        await store.purge(finished_before={_F_: float("inf"), _C: float("inf")}, limit=10),
        ["fc"],
        "purge of FAILED and CANCELLED: a sent message with a failed recipient stays, "
        "a failed one with a cancelled recipient goes",
    )
    _equal(
        await store.purge(finished_before={_S: _T0 + 51}, limit=10),
        ["mixed"],
        "purge of SENT after the last recipient finished",
    )
    # Messages of several recipients, every one finished: each counted once.
    for i in range(3):
        await _submit(store, "X:a", "X:b", "X:c", id=f"three{i}")
        await _finish(store, f"three{i}", _R.DELIVERED, now=_T0 + 100 + i)
    first = await store.purge(finished_before={_S: _T0 + 1000}, limit=2)
    _equal(len(set(first)), 2, f"purge(limit=2) of messages of three recipients: {first}")
    _equal(
        await store.purge(finished_before={_S: _T0 + 1000}, limit=2),
        sorted({"three0", "three1", "three2"} - set(first)),
        "the next purge(limit=2): the last one",
    )


@_check
async def _purge_finds_old_messages_behind_a_large_queue(store: Store) -> None:
    # Unfinished messages on either side (by id and by time) of the finished ones,
    # more of them than a purge's limit: the purge goes through to the finished ones.
    for i in range(4):
        await _submit(store, "Y:a", id=f"a-queued{i}", route=False)
    for i in range(3):
        await _submit(store, "X:a", id=f"m-old{i}")
        await _finish(store, f"m-old{i}", _R.DELIVERED, now=_T0 + i)
    await _submit(store, "X:a", id="m-recent")
    await _finish(store, "m-recent", _R.DELIVERED, now=_T0 + 500)
    for i in range(4):
        await _submit(store, "Y:a", id=f"z-queued{i}", route=False)
    cutoffs = {_S: _T0 + 100, _F_: _T0 + 100, _C: _T0 + 100}
    first = await store.purge(finished_before=cutoffs, limit=2)
    second = await store.purge(finished_before=cutoffs, limit=2)
    _equal(len(first), 2, "the first purge(limit=2) behind unfinished messages")
    _equal(
        sorted(first + second),
        ["m-old0", "m-old1", "m-old2"],
        "two purges(limit=2) take every message finished before the cutoff",
    )
    _equal(await store.purge(finished_before=cutoffs, limit=2), [], "then nothing")
    _expect(not await _gone(store, "m-recent"), "a message finished after the cutoff stays")
    _equal((await store.counts())[_R.QUEUED], 8, "the queued messages stay")


@_check
async def _inbox_purge_and_delete(store: Store) -> None:
    entries = [
        await store.deliver_inbound(
            InboundMessage("pop", _content(f"n{i}"), received_at=_T0 + i * 5)
        )
        for i in range(3)
    ]
    _equal(entries[0].sender, "alice@example.org", "an inbound message's sender from its From:")
    _equal(
        await store.purge_inbox(received_before=_T0 + 5, limit=10),
        [entries[0].id],
        "purge_inbox before the second one's arrival",
    )
    await _raises(UnknownMessage, store.read_inbox(entries[0].id), "read_inbox of a purged entry")
    await store.delete_inbox(entries[2].id)
    _equal([e.id for e in await store.list_inbox()], [entries[1].id], "the inbox after a delete")
    await _raises(UnknownMessage, store.delete_inbox(entries[2].id), "delete_inbox a second time")
    await _raises(
        StoreError, store.purge_inbox(received_before=_T0, limit=0), "purge_inbox(limit=0)"
    )


# The checks of settle's drop_finished and of purge_sections live in modules of their
# own; importing them adds them to STORE_CHECKS, after the ones above.
from . import store_drop as _store_drop  # noqa: E402, F401
from . import store_sections as _store_sections  # noqa: E402, F401
