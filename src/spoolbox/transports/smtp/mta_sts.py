"""MTA-STS (RFC 8461) for direct delivery: a domain that publishes a policy in
``enforce`` mode gets its mail only over TLS verified against its MX host's name, and
only through the MX hosts its policy names.

How a policy is found (section 3): a TXT record at ``_mta-sts.<domain>`` (``v=STSv1;
id=...``) says the domain has one, and its ``id`` changes when the policy does; the
policy itself is ``https://mta-sts.<domain>/.well-known/mta-sts.txt``, fetched over
TLS verified for that name, no redirect followed, at most 64 KiB, ``text/plain``::

    version: STSv1
    mode: enforce
    mx: mail.example.org
    mx: *.example.net
    max_age: 604800

A policy is kept for its ``max_age`` (section 5.1) and used while it lasts, also when
DNS or the policy server cannot be reached later (an attacker who blocks them gains
nothing); the TXT record is looked at again at most every :data:`CHECK_SECONDS`, and
a new ``id`` fetches the policy again.  An ``enforce`` policy is also written to the
transport's profile section in the store (``mta_sts:<domain>``), so that a restart
does not forget it: a sender that forgets is one an attacker can strip TLS from by
blocking the fetch after each restart.  A domain whose policy cannot be fetched and
that has none kept is sent to as if it had none (section 5.1).

What ``enforce`` does to a delivery (section 5): the MX hosts whose names no ``mx``
line matches are left out (none left: the mail waits, 4.7.5), and the others are
used with STARTTLS required and the certificate verified for the MX host's name (a
server without STARTTLS or with a certificate that does not verify is passed over,
its failure said).  ``testing`` and ``none`` change nothing (``testing`` is for
reports, TLSRPT, which spoolbox does not send).

The parts that read what came (:func:`policy_id`, :func:`parse_policy`,
:meth:`Policy.matches`) are pure; :class:`PolicyFinder` asks DNS through the
transport's resolver and fetches with httpx (the ``mx`` extra), connecting to the
address DNS gave for ``mta-sts.<domain>`` with that name as the TLS server name.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spoolbox.contract import ProfileSection

    from .mx import MXResolver

__all__ = [
    "CHECK_SECONDS",
    "MAX_POLICY_BYTES",
    "Policy",
    "PolicyError",
    "PolicyFinder",
    "httpx_module",
    "parse_policy",
    "policy_id",
]

#: The longest policy read (section 3.3: "a reasonable limit is 64 KiB").
MAX_POLICY_BYTES = 64 * 1024
#: The longest ``max_age`` a policy may give (section 3.2: about a year).
MAX_AGE_LIMIT = 31_557_600
#: A domain's TXT record is asked again at most this often (a new ``id``: a new policy).
CHECK_SECONDS = 300.0
#: Domains whose policies (or their absence) are kept at most (the oldest go first).
_CACHE_SIZE = 10_000
#: Domains whose last trouble getting a policy is kept (``PolicyFinder.trouble``).
_TROUBLE_KEPT = 100
_ID_RE = re.compile(r"[A-Za-z0-9]{1,32}")
#: The key of a domain's policy in the transport's profile section.
_KEY = "mta_sts:"
_MODES = ("enforce", "testing", "none")


class PolicyError(ValueError):
    """A policy (or its TXT record, or the HTTP answer carrying it) that is not one;
    the text says what is wrong."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A domain's MTA-STS policy as fetched."""

    mode: str  # "enforce", "testing" or "none"
    mx: tuple[str, ...]  # the patterns, lower case, no final dot
    max_age: int  # seconds
    id: str = ""  # the TXT record's id it was fetched under

    def matches(self, host: str) -> bool:
        """Whether MX host ``host`` is one the policy names (section 4.1): a pattern is
        the name itself, or ``*.`` and a parent of it by exactly one label."""
        name = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, dot, parent = name.partition(".")
                if label and dot and parent == pattern[2:]:
                    return True
            elif name == pattern:
                return True
        return False

    def describe(self) -> str:
        """``enforce (mx: mail.example.org, *.example.net)``."""
        return f"{self.mode} (mx: {', '.join(self.mx) or 'none'})"


def policy_id(records: Sequence[str]) -> str | None:
    """The ``id`` of a domain's ``_mta-sts`` TXT records (each one joined from its
    strings), or None when they do not say the domain has a policy: the records that
    do not begin with ``v=STSv1`` are left out, and exactly one must be left, well
    formed (section 3.1)."""
    found = [r for r in records if re.match(r"v=STSv1\s*(;|$)", r)]
    if len(found) != 1:
        return None
    fields: dict[str, str] = {}
    for part in found[0].split(";"):
        key, eq, value = part.strip().partition("=")
        if not key and not eq:
            continue  # a final ";", or spaces
        if not eq or not key:
            return None
        fields.setdefault(key.strip(), value.strip())
    ident = fields.get("id", "")
    return ident if _ID_RE.fullmatch(ident) else None


def parse_policy(text: str) -> tuple[str, tuple[str, ...], int]:
    """``(mode, mx patterns, max_age)`` of a policy's body (section 3.2): lines of
    ``key: value``; ``version`` must be ``STSv1``; keys it does not know are left out.
    :class:`PolicyError` says what is wrong."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not colon or not key:
            raise PolicyError(f"line {n} is not 'key: value': {line[:80]!r}")
        if key == "mx":
            pattern = value.lower().rstrip(".")
            if not re.fullmatch(r"(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*", pattern):
                raise PolicyError(f"line {n}: mx {value[:80]!r} is not a host name pattern")
            mx.append(pattern)
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError(f"version is {fields.get('version')!r}, not 'STSv1'")
    mode = fields.get("mode")
    if mode not in _MODES:
        raise PolicyError(f"mode is {mode!r}, not one of {', '.join(_MODES)}")
    age = fields.get("max_age", "")
    if not re.fullmatch(r"[0-9]{1,10}", age) or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {age[:20]!r} is not 0 to {MAX_AGE_LIMIT} seconds")
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} names no mx")
    return mode, tuple(mx), int(age)


@dataclass(frozen=True, slots=True)
class _Kept:
    policy: Policy | None  # None: the domain has none (its TXT record said so)
    until: float  # the policy's max_age ends (or, for none, the next look)
    checked: float  # when the TXT record was last asked


class _Look:
    """The look at one domain under way: one lane asks, those that come meanwhile
    wait for it and take its answer (``looks`` counts the answers had)."""

    __slots__ = ("found", "lock", "looks")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.looks = 0
        self.found: Policy | None = None


class PolicyFinder:
    """Each domain's policy, kept (module doc).  ``context`` verifies the policy
    servers' certificates (the system's CAs, or the transport's ``ca_file``)."""

    def __init__(
        self,
        resolver: MXResolver,
        context: ssl.SSLContext,
        *,
        port: int = 443,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        section: ProfileSection | None = None,
    ) -> None:
        self._httpx = httpx_module()
        self._resolver = resolver
        self._context = context
        self._port = port
        self._timeout = timeout
        self._clock = clock
        self._kept: dict[str, _Kept] = {}
        self._looking: dict[str, _Look] = {}  # by domain, while one is asked
        #: The last reason a policy could not be had, by domain (the status object).
        self.trouble: dict[str, str] = {}
        # The enforce policies kept in the store (a wall clock's times: they outlive
        # the process), and the keys of those past their max_age, to delete.
        self._section = section
        self._stale: dict[str, None] = {}  # (written by _drop_stale and _save)
        if section is not None:
            self._load(section.snapshot())

    def _load(self, values: Mapping[str, Any]) -> None:
        now = self._clock()
        for key, value in values.items():
            if not key.startswith(_KEY):
                continue
            policy, until = _stored(value)
            if policy is None or until <= now:
                self._stale[key] = None  # expired, or not one of ours to read
                continue
            self._kept[key.removeprefix(_KEY)] = _Kept(policy, until, float("-inf"))

    def forget_checks(self) -> None:
        """Ask every domain's TXT record again at its next message (a flush); the
        policies themselves are kept for their max_age, as the RFC asks."""
        self._kept = {d: _Kept(k.policy, k.until, float("-inf")) for d, k in self._kept.items()}

    async def policy(self, domain: str) -> Policy | None:
        """``domain``'s policy in force now, or None."""
        if self._stale and self._section is not None:
            await self._drop_stale(self._section)
        key = domain.lower().rstrip(".")
        kept = self._fresh(key)
        if kept is not None:
            return kept.policy
        # One look at a time per domain: the lanes that come meanwhile (a run of
        # messages to a new domain) take what the first one found, also when it is
        # not kept (a policy whose max_age is 0 must not be cached, but the lanes
        # that waited for its fetch use it, instead of each fetching it again in turn).
        look = self._looking.setdefault(key, _Look())
        before = look.looks
        try:
            async with look.lock:
                if look.looks != before:
                    return look.found
                kept = self._fresh(key)
                if kept is not None:
                    return kept.policy
                look.found = await self._look(key)
                look.looks += 1
                return look.found
        finally:
            if not look.lock.locked():
                self._looking.pop(key, None)

    def _fresh(self, key: str) -> _Kept | None:
        """What is kept of ``key`` when it is in force and its TXT record was asked
        less than :data:`CHECK_SECONDS` ago."""
        now = self._clock()
        kept = self._kept.get(key)
        if kept is not None and kept.until > now and now - kept.checked < CHECK_SECONDS:
            return kept
        return None

    async def _look(self, key: str) -> Policy | None:
        """Ask DNS (and the policy server, for a new id): the policy in force now."""
        now = self._clock()
        kept = self._kept.get(key)
        live = kept if kept is not None and kept.until > now else None
        try:
            records = await self._resolver.txt(f"_mta-sts.{key}", key)
        except Exception as exc:  # DNS trouble: what is kept stands (section 5.1)
            self._said(key, f"the _mta-sts TXT record: {_text(exc)}")
            return self._as_it_was(key, live, now)
        ident = policy_id(records)
        if ident is None:
            # No policy published (now): one kept still stands until its max_age.
            self.trouble.pop(key, None)
            return self._as_it_was(key, live, now)
        if live is not None and live.policy is not None and live.policy.id == ident:
            return self._as_it_was(key, live, now)
        try:
            mode, mx, max_age = parse_policy(await self._fetch(key))
        except Exception as exc:
            self._said(key, f"the policy of {key}: {_text(exc)}")
            return self._as_it_was(key, live, now)
        self.trouble.pop(key, None)
        policy = Policy(mode, mx, max_age, ident)
        self._keep(key, _Kept(policy, now + max_age, now))
        await self._save(key, policy, now + max_age)
        return policy

    async def _drop_stale(self, section: ProfileSection) -> None:
        """The stored policies past their max_age out of the store, once, at the first
        look after the logon (a store that fails leaves them there: expired, they are
        passed over at the next logon's reading and tried again then)."""
        stale, self._stale = self._stale, {}
        try:
            await section.update(stale)
        except Exception as exc:
            self._said("(store)", f"dropping expired policies failed: {_text(exc)}")

    async def _save(self, domain: str, policy: Policy, until: float) -> None:
        """An ``enforce`` policy into the store (a policy that stops being one is taken
        out); a store that fails only leaves it in memory, said in ``trouble``."""
        if self._section is None:
            return
        key = _KEY + domain
        stored = self._section.get(key) is not None
        if policy.mode != "enforce" and not stored and not self._stale:
            return
        value = (
            {
                "mode": policy.mode,
                "mx": list(policy.mx),
                "max_age": policy.max_age,
                "id": policy.id,
                "until": until,
            }
            if policy.mode == "enforce"
            else None
        )
        try:
            await self._section.update({**self._stale, key: value})
        except Exception as exc:
            self._said(domain, f"keeping its policy in the store failed: {_text(exc)}")
            return
        self._stale.clear()

    def _as_it_was(self, key: str, live: _Kept | None, now: float) -> Policy | None:
        """Nothing new was had: the policy kept stands until its max_age, and none
        stands for none; either way the TXT record is asked again only after
        :data:`CHECK_SECONDS` (a policy server that cannot be reached is not tried
        for every message)."""
        policy = None if live is None else live.policy
        until = now + CHECK_SECONDS if live is None or policy is None else live.until
        self._keep(key, _Kept(policy, until, now))
        return policy

    def _said(self, key: str, text: str) -> None:
        """Why ``key``'s policy could not be had, for the status object: the latest
        :data:`_TROUBLE_KEPT` domains' (a daemon that runs for months meets many)."""
        self.trouble.pop(key, None)
        if len(self.trouble) >= _TROUBLE_KEPT:
            del self.trouble[next(iter(self.trouble))]
        self.trouble[key] = text

    def _keep(self, key: str, kept: _Kept) -> None:
        """Keep ``kept``; past :data:`_CACHE_SIZE` domains, the oldest without an
        ``enforce`` policy goes (forgetting one of those would let a blocked fetch
        strip its TLS), the oldest of all only when every one has such a policy."""
        self._kept.pop(key, None)
        if len(self._kept) >= _CACHE_SIZE:
            victim = next(
                (
                    d
                    for d, k in self._kept.items()
                    if k.policy is None or k.policy.mode != "enforce"
                ),
                next(iter(self._kept)),
            )
            del self._kept[victim]
        self._kept[key] = kept

    async def _fetch(self, domain: str) -> str:
        """The policy's text from ``https://mta-sts.<domain>/.well-known/mta-sts.txt``."""
        host = f"mta-sts.{domain}"
        addresses = await self._resolver.addresses(host, domain)
        if not addresses:
            raise PolicyError(f"{host} has no address (DNS)")
        address = addresses[0]
        netloc = f"[{address}]" if ":" in address else address
        url = f"https://{netloc}:{self._port}/.well-known/mta-sts.txt"
        httpx = self._httpx
        client = httpx.AsyncClient(
            verify=self._context, timeout=self._timeout, follow_redirects=False, trust_env=False
        )
        request = client.stream(
            "GET",
            url,
            headers={"Host": host if self._port == 443 else f"{host}:{self._port}"},
            extensions={"sni_hostname": host},
        )
        try:
            body = await self._read(client, request, host)
        except httpx.HTTPError as exc:
            raise PolicyError(
                f"https://{host}/.well-known/mta-sts.txt ({address}): "
                f"{_text(exc) if str(exc) else type(exc).__name__}"
            ) from None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"it is not UTF-8 text ({exc.reason})") from None

    @staticmethod
    async def _read(client: Any, request: Any, host: str) -> bytes:
        """The policy's bytes: a 200 answer of type text/plain, at most 64 KiB."""
        async with client, request as response:
            if response.status_code != 200:
                raise PolicyError(
                    f"https://{host}/.well-known/mta-sts.txt answered "
                    f"{response.status_code} (a redirect is not followed)"
                )
            kind = response.headers.get("content-type", "")
            if kind.split(";")[0].strip().lower() != "text/plain":
                raise PolicyError(f"its content type is {kind[:60]!r}, not text/plain")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_POLICY_BYTES:
                    raise PolicyError(f"it is over {MAX_POLICY_BYTES} bytes")
        return body


def httpx_module() -> Any:
    """httpx, which fetches the policies; ValueError naming the extra without it (the
    logon, and ``spoolbox check``, say so)."""
    try:
        import httpx
    except ImportError as exc:
        raise ValueError(
            "smtp option 'mta_sts' needs httpx: pip install 'spoolbox[mx]' "
            f"(or mta_sts = false) ({exc})"
        ) from None
    return httpx


def _stored(value: Any) -> tuple[Policy | None, float]:
    """A policy as :meth:`PolicyFinder._save` wrote it, and until when; (None, 0) for a
    value that is not one (written by another version, or damaged)."""
    try:
        mx = tuple(str(m) for m in value["mx"])
        policy = Policy(str(value["mode"]), mx, int(value["max_age"]), str(value["id"]))
        until = float(value["until"])
    except (KeyError, TypeError, ValueError):
        return None, 0.0
    if policy.mode != "enforce" or not mx:
        return None, 0.0
    return policy, until


def _text(exc: BaseException) -> str:
    """An error in one line, without the ``x-spoolbox; `` of a Failure."""
    text = str(exc).removeprefix("x-spoolbox; ") or type(exc).__name__
    return " ".join(text.split())[:300]
