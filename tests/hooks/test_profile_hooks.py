"""``[[hooks]]`` in the profile: read in order, checked, ``*_file`` options made
absolute, and a spooler built from the profile runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from spoolbox.profile import ProfileError, load_profile

TOP = 'data_dir = "data"\n'
BASE = """
[[transports]]
name = "drop"
provider = "maildir"
address_types = ["MAILDIR"]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spoolbox.toml"
    p.write_text(TOP + text + BASE)
    return p


def test_hooks_are_read_in_order_with_files_resolved(tmp_path: Path) -> None:
    profile = load_profile(
        write(
            tmp_path,
            """
[[hooks]]
name = "strip"
hook = "headers"
[hooks.options]
remove = ["Bcc"]

[[hooks]]
name = "sign"
hook = "dkim"
[hooks.options]
key_file = "keys/main.key"
[hooks.options.domains."other.example"]
selector = "s2"
key_file = "~/other.key"
""",
        )
    )
    assert [(h.name, h.hook) for h in profile.hooks] == [("strip", "headers"), ("sign", "dkim")]
    assert profile.hooks[0].options == {"remove": ["Bcc"]}
    sign = profile.hooks[1].options
    assert sign["key_file"] == str(tmp_path / "keys" / "main.key")
    assert sign["domains"]["other.example"]["key_file"] == str(Path("~/other.key").expanduser())
    assert sign["domains"]["other.example"]["selector"] == "s2"


def test_no_hooks_is_an_empty_chain(tmp_path: Path) -> None:
    assert load_profile(write(tmp_path, "")).hooks == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("hooks = 1\n", "expected an array of tables ([[hooks]])"),
        ('[[hooks]]\nhook = "dkim"\n', "expected a hook name"),
        ('[[hooks]]\nname = "x"\n', "expected a hook: an entry-point name"),
        ('[[hooks]]\nname = "x"\nhook = "dkim"\ncolour = 1\n', "[hooks.x] colour: unknown key"),
        (
            '[[hooks]]\nname = "x"\nhook = "dkim"\n[[hooks]]\nname = "x"\nhook = "headers"\n',
            "the hook name 'x' is used twice",
        ),
        ('[[hooks]]\nname = "a b"\nhook = "dkim"\n', "hook name 'a b' is invalid"),
    ],
)
def test_bad_hook_tables_are_refused_with_where(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ProfileError) as caught:
        load_profile(write(tmp_path, text))
    assert says in str(caught.value)
