"""A message's id: 1 to 64 letters, digits or ``-_.``; anything else is refused with
a MessageError that names the id, before anything is stored."""

from __future__ import annotations

import pytest

from spoolbox.model import Address, MessageError, NewMessage

_BOB = (Address.parse("X:bob"),)


@pytest.mark.parametrize("good", ["a", "A-b_c.d", "x" * 64, "0123", "é1", "---", "."])
def test_an_id_of_letters_digits_and_dashes_dots_underscores_is_taken(good: str) -> None:
    assert NewMessage(None, _BOB, b"x", id=good).id == good


@pytest.mark.parametrize("bad", ["", "x" * 65, "a b", "a/b", "a@b", "é!", "-!-", "a\nb", "a\x00"])
def test_any_other_id_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(MessageError, match=r"message id .* is invalid: use 1 to 64 letters"):
        NewMessage(None, _BOB, b"x", id=bad)


def test_a_new_id_is_a_valid_one() -> None:
    ids = {NewMessage(None, _BOB, b"x").id for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 23 for i in ids)
