"""A corpus of bad profiles through the CLI: `--profile PATH status` and `profiles check PATH`.

Each must exit 2 with one line on stderr that names the file, the line and the key, without a
traceback, and must not create the data dir. Every case runs through CliRunner; a few also run
through the real console script.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Cli, Proc, stderr_lines

LOCAL = '[[hosts]]\nname = "local"\nkind = "local"\n'
SSH = '[[hosts]]\nname = "gpu-1"\nkind = "ssh"\naddress = "gpu-1.lab.example"\n'

# name: (profile text, line of the error, what the line must say after "FILE:LINE: ")
CORPUS: dict[str, tuple[str, int, str]] = {
    "malformed-toml": (
        'durability = "normal"\n\n[queue]\nmax_attempts = \nlease_ttl_s = 30.0\n',
        4,
        "invalid TOML",
    ),
    "malformed-toml-unclosed-table": ('durability = "normal"\n[queue\n', 2, "invalid TOML"),
    "unknown-key": (
        'durability = "normal"\n\n[queue]\nmax_attempts = 3\ncolour = "red"\n',
        5,
        "queue.colour: unknown key",
    ),
    "unknown-top-level-key": (
        '# a comment\ndurability = "normal"\nfleet = 3\n',
        3,
        "fleet: unknown key",
    ),
    "unknown-key-in-second-host": (
        LOCAL + "\n" + SSH + "gpus = 8\n",
        9,
        "hosts[1].gpus: unknown key",
    ),
    "wrong-type": (
        '[queue]\nlease_ttl_s = 30.0\nmax_attempts = "three"\n',
        3,
        "queue.max_attempts: expected an integer",
    ),
    "wrong-type-boolean-port": (SSH + "port = true\n", 5, "hosts[0].port: expected an integer"),
    "wrong-type-durability": ("durability = 1\n", 1, "durability: expected a string"),
    "empty-host-name": (
        LOCAL + '\n[[hosts]]\nname = ""\nkind = "ssh"\naddress = "x"\n',
        6,
        "hosts[1].name: is empty",
    ),
    "blank-host-name": (
        '[[hosts]]\nkind = "local"\nname = "   "\n',
        3,
        "hosts[0].name: is empty",
    ),
    "port-0": (SSH + "port = 0\n", 5, "hosts[0].port: 0 is out of range"),
    "port-70000": (SSH + 'user = "llm"\nport = 70000\n', 6, "hosts[0].port: 70000 is out of range"),
    "host-name-starting-with-dash": (
        LOCAL + '\n[[hosts]]\nname = "-gpu"\nkind = "ssh"\naddress = "x"\n',
        6,
        'hosts[1].name: "-gpu" is not a valid host name',
    ),
    "identity-file-is-a-folder": (
        SSH + 'identity_file = "/"\n',
        5,
        "hosts[0].identity_file: / is not a file",
    ),
    "duplicate-host-name": (LOCAL + "\n" + LOCAL, 6, 'hosts[1].name: duplicate host name "local"'),
    "ssh-key-on-a-local-host": (LOCAL + "port = 22\n", 4, "hosts[0].port: only applies to ssh"),
}

THROUGH_SUBPROCESS = [
    "malformed-toml",
    "unknown-key",
    "port-70000",
    "host-name-starting-with-dash",
    "identity-file-is-a-folder",
]


def write_profile(folder: Path, case: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{case}.toml"
    path.write_text(CORPUS[case][0], encoding="utf-8")
    return path


def expected_prefix(cwd: Path, path: Path, case: str) -> str:
    """`bitinglip: FILE:LINE: ` then what the case says; FILE is relative to the cwd."""
    _, line, says = CORPUS[case]
    return f"bitinglip: {path.relative_to(cwd)}:{line}: {says}"


def check_status(code: int, stderr: str, prefix: str, case: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr_lines(stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith(prefix), (lines[0], prefix)
    if case == "identity-file-is-a-folder":
        assert "/ is not a file" in lines[0]


def check_check(code: int, stderr: str, prefix: str) -> None:
    """`profiles check`: one line for the problem, then its one-line summary."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr_lines(stderr)
    problems = [line for line in lines if "profiles invalid" not in line]
    assert len(problems) == 1, lines
    assert problems[0].startswith(prefix), (problems[0], prefix)
    assert lines[1:] == ["bitinglip: 1 of 1 profiles invalid"], lines


@pytest.mark.parametrize("case", list(CORPUS))
def test_status_with_a_bad_profile(cli: Cli, tmp_path: Path, case: str) -> None:
    path = write_profile(tmp_path / "bad", case)
    result = cli("--profile", path, "status")
    check_status(result.exit_code, result.stderr, expected_prefix(tmp_path, path, case), case)
    assert result.stdout == ""
    assert not cli.data_dir.exists()
    assert not (tmp_path / "xdg-data").exists()


@pytest.mark.parametrize("case", list(CORPUS))
def test_profiles_check_with_a_bad_profile(cli: Cli, tmp_path: Path, case: str) -> None:
    path = write_profile(tmp_path / "bad", case)
    result = cli("profiles", "check", path, data_dir=False)
    check_check(result.exit_code, result.stderr, expected_prefix(tmp_path, path, case))
    assert result.stdout == ""


@pytest.mark.parametrize("case", THROUGH_SUBPROCESS)
def test_bad_profiles_through_the_console_script(proc: Proc, tmp_path: Path, case: str) -> None:
    path = write_profile(tmp_path / "bad", case)
    prefix = expected_prefix(tmp_path, path, case)
    status = proc("--profile", path, "status", "--json")
    check_status(status.returncode, status.stderr, prefix, case)
    assert status.stdout == ""
    relative = proc("--profile", path.relative_to(tmp_path), "status")
    check_status(relative.returncode, relative.stderr, prefix, case)
    check = proc("profiles", "check", path, data_dir=False)
    check_check(check.returncode, check.stderr, prefix)
    assert not proc.data_dir.exists()


def test_a_good_profile_is_accepted_beside_a_bad_one(cli: Cli, tmp_path: Path) -> None:
    """The control: the same harness passes a valid file, so the failures above are real."""
    good = tmp_path / "good" / "fleet.toml"
    good.parent.mkdir()
    good.write_text(LOCAL + "\n" + SSH + "port = 2222\n", encoding="utf-8")
    bad = write_profile(tmp_path / "bad", "port-0")
    assert cli.json("--profile", good, "status")["hosts"] == ["local", "gpu-1"]
    result = cli("profiles", "check", good, bad, data_dir=False)
    assert result.exit_code == 2
    assert result.stdout.split() == ["ok", "fleet", str(good)]
    lines = stderr_lines(result.stderr)
    assert lines[0].startswith(expected_prefix(tmp_path, bad, "port-0"))
    assert lines[1:] == ["bitinglip: 1 of 2 profiles invalid"]


def test_a_missing_profile_file_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    result = cli("--profile", tmp_path / "nope.toml", "status")
    assert result.exit_code == 2
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1 and "nope.toml" in lines[0] and "does not exist" in lines[0]
