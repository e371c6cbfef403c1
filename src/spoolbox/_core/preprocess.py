"""Preprocessors a transport registered (RegisterPreprocessor), and which of them a
job needs.

One :class:`Preprocessors` per session: the support object fills it in ``logon``
and the outbound lane asks it, for each claimed job, which registrations match the
job's recipients.  Matching is the original's for address types (§5.6): a
registration with types runs when any of the job's recipients has one of them, one
without types runs for every message.  Order is registration order.  Running them is
:mod:`.hosts.hooked`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..contract.errors import ContractViolation
from ..contract.hooks import PreprocessInfoRemover, Preprocessor

__all__ = ["Preprocessors", "Registration"]


@dataclass(frozen=True, slots=True)
class Registration:
    """One RegisterPreprocessor call."""

    preprocess: Preprocessor
    remove: PreprocessInfoRemover | None
    types: frozenset[str] | None  # upper-case; None: every address type

    @property
    def name(self) -> str:
        """How errors and logs name it: the callable's qualified name."""
        fn = self.preprocess
        return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or fn)

    def matches(self, types: Iterable[str]) -> bool:
        return self.types is None or any(t.upper() in self.types for t in types)


class Preprocessors:
    """The registrations of one session, in order."""

    def __init__(self) -> None:
        self._items: list[Registration] = []

    def __len__(self) -> int:
        return len(self._items)

    def register(
        self,
        preprocess: Preprocessor,
        *,
        address_types: Iterable[str] | None = None,
        remove: PreprocessInfoRemover | None = None,
    ) -> Registration:
        if not callable(preprocess):
            raise ContractViolation(
                f"register_preprocessor() takes an async callable, not {preprocess!r}"
            )
        if remove is not None and not callable(remove):
            raise ContractViolation(f"register_preprocessor(remove=) is not callable: {remove!r}")
        types: frozenset[str] | None = None
        if address_types is not None:
            if isinstance(address_types, str):
                raise ContractViolation(
                    "register_preprocessor(address_types=) takes a collection of types, "
                    f"not the string {address_types!r}"
                )
            types = frozenset(str(t).upper() for t in address_types)
            if not types:
                raise ContractViolation(
                    "register_preprocessor(address_types=) is empty: pass None for every type"
                )
        reg = Registration(preprocess, remove, types)
        self._items.append(reg)
        return reg

    def matching(self, types: Iterable[str]) -> tuple[Registration, ...]:
        """The registrations to run for a job whose recipients have ``types``."""
        wanted = tuple(types)
        return tuple(r for r in self._items if r.matches(wanted))
