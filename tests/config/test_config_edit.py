"""Adding and removing hosts edits real profile files and keeps every other byte of them."""

from __future__ import annotations

import difflib
import os
import stat
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitinglip.config import Profile, load_profile
from bitinglip.config_edit import CREATED_HEADER, add_host, remove_host
from bitinglip.errors import ConfigError

LAB = Path(__file__).resolve().parents[2] / "profiles" / "lab.example.toml"
GPU_C = {"name": "gpu-c", "kind": "ssh", "address": "10.0.0.3", "port": 2200}

SMALL = """\
# My fleet.

[[hosts]]
name = "a"     # the first
kind = "local"
"""


def write(folder: Path, text: str, name: str = "lab.toml") -> Path:
    path = folder / name
    path.write_bytes(text.encode())
    return path


def loaded(path: Path) -> Profile:
    return load_profile(str(path))


def comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("#")]


def changes(before: str, after: str) -> list[tuple[str, list[str]]]:
    """The line blocks that differ: ("insert" | "delete" | "replace", the lines concerned)."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    return [
        (tag, b[j1:j2] if tag == "insert" else a[i1:i2])
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        if tag != "equal"
    ]


def test_add_inserts_one_block_after_the_last_host(tmp_path: Path) -> None:
    path = write(tmp_path, LAB.read_text())
    before = path.read_text()
    labels = {"role": "batch", "odd key": 'quote " here'}
    assert add_host(loaded(path), {**GPU_C, "user": None, "labels": labels}) == path
    after = path.read_text()
    [(tag, lines)] = changes(before, after)
    assert tag == "insert"
    assert "".join(lines).strip().startswith("[[hosts]]")
    assert '\n\n[[hosts]]\nname = "gpu-c"\n' in after  # a blank line before the entry
    assert after.index('[[hosts]]\nname = "gpu-c"') < after.index("# Model aliases")
    host = loaded(path).hosts[-1]
    assert (host.name, host.address, host.port, host.user) == ("gpu-c", "10.0.0.3", 2200, None)
    assert dict(host.labels) == labels


def test_add_then_remove_gives_back_the_original_bytes(tmp_path: Path) -> None:
    for text in (LAB.read_text(), SMALL, SMALL.replace("\n", "\r\n"), "durability = 'full'\n"):
        path = write(tmp_path, text)
        add_host(loaded(path), GPU_C)
        if "\r\n" in text:
            assert b"\n" not in path.read_bytes().replace(b"\r\n", b"")
        remove_host(loaded(path), "gpu-c")
        assert path.read_bytes() == text.encode()


def test_a_file_without_a_final_newline_stays_equivalent(tmp_path: Path) -> None:
    path = write(tmp_path, SMALL.rstrip("\n"))
    original = loaded(path)
    add_host(original, GPU_C)
    remove_host(loaded(path), "gpu-c")
    assert comments(path.read_text()) == comments(SMALL)
    assert loaded(path).to_dict() == original.to_dict()


@pytest.mark.parametrize("name", ["workstation", "gpu-a", "gpu-b"])
def test_remove_takes_out_one_entry_and_no_other_comment(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, LAB.read_text())
    before, original = path.read_text(), loaded(path)
    remove_host(original, name)
    after = path.read_text()
    [(tag, removed)] = changes(before, after)
    assert tag == "delete"
    assert [line for line in removed if line.startswith("[[")] == ["[[hosts]]\n"]
    assert f'name = "{name}"' in "".join(removed)
    removed_comments = comments("".join(removed))
    assert comments(after) == [c for c in comments(before) if c not in removed_comments]
    assert [h for h in original.hosts if h.name != name] == list(loaded(path).hosts)
    assert loaded(path).models == original.models


def test_the_removed_entry_takes_its_own_comments_and_sub_tables(tmp_path: Path) -> None:
    path = write(tmp_path, LAB.read_text())
    remove_host(loaded(path), "gpu-b")
    after = path.read_text()
    assert "# A box only reachable" not in after and "proxy_jump = " not in after
    assert "[hosts.labels]" not in after
    assert "# Model aliases" in after and "# A lab box reached directly" in after


def test_a_duplicate_name_is_refused_and_the_file_untouched(tmp_path: Path) -> None:
    path = write(tmp_path, LAB.read_text())
    before = path.stat()
    with pytest.raises(ConfigError) as error:
        add_host(loaded(path), {**GPU_C, "name": "gpu-a"})
    message = str(error.value)
    lines = LAB.read_text().splitlines()
    header = lines.index('name = "gpu-a"')  # its [[hosts]] header is the line above
    assert message.startswith(f"{path}:{header}: hosts[1].name: ")
    assert '"gpu-a" already exists' in message and "`bitinglip hosts rm gpu-a`" in message
    assert "\n" not in message
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert path.read_text() == LAB.read_text()


def test_removing_an_unknown_host_says_how_to_list_them(tmp_path: Path) -> None:
    path = write(tmp_path, LAB.read_text())
    with pytest.raises(ConfigError) as error:
        remove_host(loaded(path), "gpu-z")
    assert str(error.value) == f"no host gpu-z in {path}; `bitinglip hosts ls` lists them"
    assert path.read_text() == LAB.read_text()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"port": 0}, "port: 0 is out of range"),
        ({"name": "-x"}, 'name: "-x" is not a valid host name'),
        ({"identity_file": "/"}, "identity_file: / is not a file"),
        ({"address": None}, "address: missing key"),
        ({"colour": "red"}, "colour: unknown key"),
    ],
)
def test_a_host_that_would_not_load_is_refused_and_the_file_untouched(
    tmp_path: Path, change: dict[str, object], problem: str
) -> None:
    path = write(tmp_path, LAB.read_text())
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match=problem) as error:
        add_host(loaded(path), {**GPU_C, **change})
    assert str(error.value).startswith(f"{path}:")
    assert path.read_text() == LAB.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.toml"]  # no temp file left


def test_the_identity_file_may_be_a_path(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "id_ed25519"
    key.parent.mkdir()
    key.write_text("not really a key\n")
    path = write(tmp_path, SMALL)
    add_host(loaded(path), {**GPU_C, "identity_file": key})
    assert loaded(path).hosts[-1].identity_file == key


def test_the_built_in_default_becomes_a_file_in_the_user_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./profiles/default.toml shadows the user's
    builtin = load_profile()
    assert builtin.path is None
    written = add_host(builtin, GPU_C)
    assert written == Path(os.environ["XDG_CONFIG_HOME"]) / "bitinglip" / "profiles/default.toml"
    text = written.read_text()
    assert text.startswith(CREATED_HEADER)
    now = load_profile()
    assert now.path == written
    assert [h.name for h in now.hosts] == ["local", "gpu-c"]
    assert now.models == builtin.models and now.queue == builtin.queue
    with pytest.raises(ConfigError, match="exists but the active profile is the built-in"):
        add_host(builtin, {**GPU_C, "name": "gpu-d"})


def test_removing_from_the_built_in_default_also_writes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no host gpu-z in the built-in default profile"):
        remove_host(load_profile(), "gpu-z")
    written = remove_host(load_profile(), "local")
    assert load_profile().hosts == () and comments(written.read_text()) == comments(CREATED_HEADER)


def test_the_mode_and_a_symlink_are_kept(tmp_path: Path) -> None:
    real = write(tmp_path, SMALL, "real.toml")
    os.chmod(real, 0o600)
    link = tmp_path / "lab.toml"
    link.symlink_to(real)
    add_host(loaded(link), GPU_C)
    assert link.is_symlink() and "gpu-c" in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.toml", "real.toml"]


def test_hosts_written_as_an_inline_array_are_not_edited(tmp_path: Path) -> None:
    path = write(tmp_path, 'hosts = [{ name = "a", kind = "local" }]\n')
    for edit in (lambda p: add_host(p, GPU_C), lambda p: remove_host(p, "a")):
        with pytest.raises(ConfigError, match="inline array, which this command cannot edit"):
            edit(loaded(path))
    assert path.read_text() == 'hosts = [{ name = "a", kind = "local" }]\n'


def test_a_header_inside_a_multi_line_string_is_not_a_header(tmp_path: Path) -> None:
    text = SMALL + 'python = """\n[[hosts]]\nname = "fake"\n"""\n\n[models.m]\nsource = "hf:a/b"\n'
    path = write(tmp_path, text)
    add_host(loaded(path), GPU_C)
    assert [h.name for h in loaded(path).hosts] == ["a", "gpu-c"]
    remove_host(loaded(path), "gpu-c")
    assert path.read_text() == text


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    address=st.text(st.characters(codec="utf-8"), min_size=1).filter(str.strip),
    label=st.text(st.characters(codec="utf-8"), max_size=20),
)
def test_any_string_value_round_trips(address: str, label: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), LAB.read_text())
        add_host(loaded(path), {**GPU_C, "address": address, "labels": {label: label}})
        host = loaded(path).hosts[-1]
        assert (host.address, dict(host.labels)) == (address, {label: label})
        assert tomllib.loads(path.read_text())["hosts"][-1]["address"] == address
        remove_host(loaded(path), "gpu-c")
        assert path.read_text() == LAB.read_text()
