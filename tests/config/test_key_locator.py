"""KeyLocator: the line of a key path in a TOML text, checked against real TOML shapes."""

from __future__ import annotations

import tomllib

import pytest

from bitinglip.config import toml_syntax_error
from bitinglip.config_locator import KeyLocator, KeyPath, format_key

TEXT = '''\
# a comment with [brackets] and key = "value"
name = "x"                      # 2
"quoted key" = 1                # 3
'literal.key' = 2               # 4
dotted.inner.leaf = 3           # 5
text = """
[queue]
fake = 1
"""                             # 6-9
raw = \'\'\'
[[hosts]]
\'\'\'                          # 10-12
tricky = "a [ { # \\" ]"         # 13
array = [                       # 14
  1,
  [2, 3],
]

[queue]                         # 19
max_attempts = 3                # 20
  indented = 4                  # 21

[[hosts]]                       # 23
name = "a"                      # 24
labels = { role = "dev" }       # 25

[[hosts]]                       # 27
name = "b"                      # 28

[hosts.labels]                  # 30
role = "prod"                   # 31

[[hosts.disks]]                 # 33
size = 1                        # 34

[models."qwen2.5"]              # 36
source = "hf:a/b"               # 37

[ models . 'lit' ]              # 39
source = "hf:c/d"               # 40
quote = """ends with quotes"""""  # 41
after = 1                       # 42
'''


@pytest.fixture(scope="module")
def locator() -> KeyLocator:
    tomllib.loads(TEXT)  # the fixture itself must be valid TOML
    return KeyLocator(TEXT)


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("name",), 2),
        (("quoted key",), 3),
        (("literal.key",), 4),
        (("dotted",), 5),
        (("dotted", "inner", "leaf"), 5),
        (("text",), 6),
        (("raw",), 10),
        (("tricky",), 13),
        (("array",), 14),
        (("array", 1), 14),
        (("queue",), 19),
        (("queue", "max_attempts"), 20),
        (("queue", "indented"), 21),
        (("queue", "missing"), 19),
        (("hosts",), 23),
        (("hosts", 0), 23),
        (("hosts", 0, "name"), 24),
        (("hosts", 0, "labels", "role"), 25),
        (("hosts", 1), 27),
        (("hosts", 1, "name"), 28),
        (("hosts", 1, "labels"), 30),
        (("hosts", 1, "labels", "role"), 31),
        (("hosts", 1, "disks", 0, "size"), 34),
        (("models", "qwen2.5", "source"), 37),
        (("models", "lit", "source"), 40),
        (("models", "lit", "quote"), 41),
        (("models", "lit", "after"), 42),
        (("nowhere", "at", "all"), 1),
    ],
)
def test_line_of(locator: KeyLocator, path: KeyPath, line: int) -> None:
    assert locator.line_of(path) == line


def test_fake_keys_inside_multiline_strings_are_not_located(locator: KeyLocator) -> None:
    assert ("fake",) not in locator.lines
    assert ("queue", "fake") not in locator.lines
    assert ("hosts", 2) not in locator.lines


def test_format_key() -> None:
    assert format_key(("hosts", 1, "port")) == "hosts[1].port"
    assert format_key(("models", "gemma-3-270m", "source")) == "models.gemma-3-270m.source"
    assert format_key(("models", "qwen2.5")) == 'models."qwen2.5"'
    assert format_key(()) == "(top level)"


@pytest.mark.parametrize(
    ("text", "line"),
    [("a = 1\nb = [1,\n", 2), ("a = 1\n\nb = 1 2\n", 3), ('a = """abc\n\n', 2)],
)
def test_toml_syntax_error_line(text: str, line: int) -> None:
    with pytest.raises(tomllib.TOMLDecodeError) as caught:
        tomllib.loads(text)
    message = str(toml_syntax_error("p.toml", text, str(caught.value)))
    assert message.startswith(f"p.toml:{line}: invalid TOML: "), message
    assert "\n" not in message
