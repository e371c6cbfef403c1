"""``Notify.from_text``: sendmail's ``-N`` and ``spoolbox send --notify`` words."""

from __future__ import annotations

import pytest

from spoolbox import Notify


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("never", Notify.NEVER),
        ("NEVER", Notify.NEVER),
        ("failure", Notify.FAILURE),
        ("delay,failure", Notify.DELAY | Notify.FAILURE),
        (" success , Delay ", Notify.SUCCESS | Notify.DELAY),
        ("success,failure,delay,", Notify.SUCCESS | Notify.FAILURE | Notify.DELAY),
    ],
)
def test_the_words_make_the_flags(text: str, expected: Notify) -> None:
    assert Notify.from_text(text) == expected


@pytest.mark.parametrize("text", ["", " , ", "sometimes", "never,failure", "fail"])
def test_anything_else_says_what_was_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected never, or a comma list") as err:
        Notify.from_text(text)
    assert str(err.value) == (
        f"{text!r}: expected never, or a comma list of success, failure, delay"
    )
