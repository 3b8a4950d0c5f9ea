"""The model-aware serving keys: `[models.NAME]` runtime settings, `[serving]`, the hosts' load
limits and `[gateway] auto_pull` — defaults, good values, and every bad value as one
`file:line` error (also through `bitinglip profiles check`, exit 2).

Real profile files in `tmp_path`, read with `load_profile` and through the CLI.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bitinglip.cli import app
from bitinglip.config import (
    ModelAlias,
    Profile,
    ServingConfig,
    duration_seconds,
    load_profile,
)
from bitinglip.errors import ConfigError

MODEL = '[models.m]\nsource = "hf:o/r"\n'  # a model table; its keys start on line 3
HOST = '[[hosts]]\nname = "h"\nkind = "local"\n'  # a host; its keys start on line 4


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
    }


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    folder = tmp_path / "project" / "profiles"
    folder.mkdir(parents=True)
    return folder.parent


def load(cwd: Path, env: dict[str, str], text: str) -> Profile:
    (cwd / "profiles" / "p.toml").write_text(textwrap.dedent(text), encoding="utf-8")
    return load_profile("p", env=env, cwd=cwd)


def error(cwd: Path, env: dict[str, str], text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(cwd, env, text)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 2
    return message


def assert_error(message: str, line: int, key: str, *parts: str) -> None:
    assert message.startswith(f"profiles/p.toml:{line}: {key}: "), message
    assert "; " in message, message  # the fix follows the problem
    for part in parts:
        assert part in message, message


# -- defaults --------------------------------------------------------------------------------


def test_defaults_of_a_profile_without_the_new_keys(cwd: Path, env: dict[str, str]) -> None:
    profile = load(cwd, env, MODEL + HOST)
    model, host = profile.models["m"], profile.hosts[0]
    assert (model.n_ctx, model.gpu_layers, model.parallel, model.min_replicas) == (
        4096,
        "auto",
        1,
        0,
    )
    unset = ["threads", "flash_attn", "cache_type_k", "cache_type_v", "split_mode"]
    unset += ["tensor_split", "main_gpu", "chat_format", "keep_alive"]
    assert all(getattr(model, key) is None for key in unset)
    assert profile.serving == ServingConfig("model", 4, 300.0)
    assert (host.max_loaded_models, host.memory_budget_gib) == (2, None)
    assert profile.gateway.auto_pull is True


def test_the_builtin_default_spells_out_the_serving_defaults(env: dict[str, str]) -> None:
    profile = load_profile(env=env)
    assert profile.serving == ServingConfig()
    assert profile.hosts[0].max_loaded_models == 2


# -- good values -----------------------------------------------------------------------------


def test_every_runtime_key_is_read(cwd: Path, env: dict[str, str]) -> None:
    profile = load(
        cwd,
        env,
        MODEL
        + """\
        n_ctx = 8192
        gpu_layers = 20
        threads = 6
        flash_attn = true
        cache_type_k = "q8_0"
        cache_type_v = "q4_0"
        split_mode = "row"
        tensor_split = [3, 1.5, 0]
        main_gpu = 1
        chat_format = "chatml-function-calling"
        parallel = 64
        keep_alive = "1h30m"
        min_replicas = 2
        """,
    )
    assert profile.models["m"] == ModelAlias(
        "m",
        "hf:o/r",
        n_ctx=8192,
        gpu_layers=20,
        threads=6,
        flash_attn=True,
        cache_type_k="q8_0",
        cache_type_v="q4_0",
        split_mode="row",
        tensor_split=(3.0, 1.5, 0.0),
        main_gpu=1,
        chat_format="chatml-function-calling",
        parallel=64,
        keep_alive=5400.0,
        min_replicas=2,
    )


@pytest.mark.parametrize("value", ['"auto"', "-1", "0", "999"])
def test_gpu_layers_values(cwd: Path, env: dict[str, str], value: str) -> None:
    model = load(cwd, env, MODEL + f"gpu_layers = {value}\n").models["m"]
    assert model.gpu_layers == json.loads(value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ('"5m"', 300.0),
        ('"90s"', 90.0),
        ('"1h"', 3600.0),
        ('"1h30m"', 5400.0),
        ('"1.5h"', 5400.0),
        ('"250ms"', 0.25),
        ('"300"', 300.0),
        ("300", 300.0),
        ("2.5", 2.5),
        ("0", 0.0),
        ('"0"', 0.0),
        ("-1", -1.0),
        ('"-1"', -1.0),
        ('"-5m"', -1.0),
        ("-30", -1.0),
    ],
)
def test_keep_alive_durations(cwd: Path, env: dict[str, str], value: str, seconds: float) -> None:
    profile = load(cwd, env, f"[serving]\nkeep_alive = {value}\n\n{MODEL}keep_alive = {value}\n")
    assert profile.serving.keep_alive == seconds
    assert profile.models["m"].keep_alive == seconds


def test_serving_section(cwd: Path, env: dict[str, str]) -> None:
    text = '[serving]\nplacement = "rotation"\nscale_out_queue_depth = 1\nkeep_alive = "10m"\n'
    assert load(cwd, env, text).serving == ServingConfig("rotation", 1, 600.0)


def test_host_limits(cwd: Path, env: dict[str, str]) -> None:
    host = load(cwd, env, HOST + "max_loaded_models = 5\nmemory_budget_gib = 7\n").hosts[0]
    assert (host.max_loaded_models, host.memory_budget_gib) == (5, 7.0)
    assert isinstance(host.memory_budget_gib, float)
    assert host.to_dict()["max_loaded_models"] == 5


def test_gateway_auto_pull(cwd: Path, env: dict[str, str]) -> None:
    assert load(cwd, env, "[gateway]\nauto_pull = false\n").gateway.auto_pull is False
    assert load(cwd, env, "[gateway]\nauto_pull = true\n").gateway.auto_pull is True


def test_the_profile_and_its_new_parts_are_frozen(cwd: Path, env: dict[str, str]) -> None:
    profile = load(cwd, env, MODEL + "tensor_split = [1, 1]\n")
    with pytest.raises(AttributeError):
        profile.serving.keep_alive = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        profile.models["m"].n_ctx = 1  # type: ignore[misc]
    assert isinstance(profile.models["m"].tensor_split, tuple)


# -- bad values ------------------------------------------------------------------------------

BAD_MODEL_VALUES = [
    ("n_ctx = 64", "64 is out of range", "use a context of 128 to"),
    ("n_ctx = 99999999999", "is out of range", "tokens"),
    ('n_ctx = "4k"', 'expected an integer, got a string ("4k")', "n_ctx = 4096"),
    ('gpu_layers = "all"', '"all" is not allowed', 'use "auto"'),
    ("gpu_layers = -2", "-2 is out of range", "-1 (all layers)"),
    ("gpu_layers = 1.5", 'expected "auto" or an integer, got a float', 'gpu_layers = "auto"'),
    ("gpu_layers = true", "got a boolean", 'gpu_layers = "auto"'),
    ("threads = 0", "0 is out of range", "use 1 to 1024 threads"),
    ('flash_attn = "yes"', "expected a boolean", "flash_attn = true"),
    ('cache_type_k = "q3_k"', '"q3_k" is not allowed', '"q8_0"'),
    ('cache_type_k = "F16"', '"F16" is not allowed', '"f16"'),
    ('cache_type_v = "q8_0"', '"q8_0" needs flash_attn = true', "add flash_attn = true"),
    ('split_mode = "tensor"', '"tensor" is not allowed', 'use "none" or "layer" or "row"'),
    ("tensor_split = 1", "expected a non-empty array of numbers", "tensor_split = [3, 1]"),
    ("tensor_split = []", "expected a non-empty array of numbers", "tensor_split = [3, 1]"),
    ("tensor_split = [1, -1]", "-1 is not a share", "tensor_split = [3, 1]"),
    ('tensor_split = [1, "a"]', '"a" is not a share', "tensor_split = [3, 1]"),
    ("tensor_split = [0, 0]", "every share is 0", "at least one GPU"),
    (f"tensor_split = [{', '.join(['1'] * 17)}]", "17 shares for at most 16 GPUs", "at most"),
    ("main_gpu = -1", "-1 is out of range", "from 0 to 15"),
    ('chat_format = "chat ml"', '"chat ml" is not a chat format name', '"chatml"'),
    ('chat_format = ""', "is empty", "give it a value"),
    ("parallel = 0", "0 is out of range", "use 1 to 64 sequences"),
    ("parallel = 65", "65 is out of range", "use 1 to 64 sequences"),
    ('keep_alive = "5 minutes"', '"5 minutes" is not a duration', '"90s", "5m"'),
    ('keep_alive = "5d"', '"5d" is not a duration', "-1 keeps the model loaded for ever"),
    ('keep_alive = "m"', '"m" is not a duration', "a number of seconds"),
    ('keep_alive = ""', '"" is not a duration', "0 unloads it"),
    ("keep_alive = true", "true is not a duration", '"5m"'),
    ("keep_alive = inf", "inf is not a duration", '"5m"'),
    ("min_replicas = -1", "-1 is out of range", "0 (load on demand)"),
    ("context = 4096", "unknown key", "known keys: source, file, revision, n_ctx"),
]


@pytest.mark.parametrize(("line_text", "problem", "fix"), BAD_MODEL_VALUES)
def test_bad_model_values(
    cwd: Path, env: dict[str, str], line_text: str, problem: str, fix: str
) -> None:
    key = "models.m." + line_text.split(" =")[0]
    message = error(cwd, env, MODEL + 'file = "x.gguf"\n' + line_text + "\n")
    assert_error(message, 4, key, problem, fix)


@pytest.mark.parametrize(
    ("line_text", "problem", "fix"),
    [
        ('placement = "models"', '"models" is not allowed', 'use "model" or "rotation"'),
        ("scale_out_queue_depth = 0", "0 is out of range", "at least 1"),
        ('scale_out_queue_depth = "4"', "expected an integer", "scale_out_queue_depth = 4"),
        ('keep_alive = "forever"', '"forever" is not a duration', "-1 keeps the model"),
        ("keep_alive = [5]", "an array is not a duration", '"5m"'),
        ("stickiness = 2", "unknown key", "placement, scale_out_queue_depth, keep_alive"),
    ],
)
def test_bad_serving_values(
    cwd: Path, env: dict[str, str], line_text: str, problem: str, fix: str
) -> None:
    message = error(cwd, env, "# serving\n[serving]\n" + line_text + "\n")
    assert_error(message, 3, "serving." + line_text.split(" =")[0], problem, fix)


@pytest.mark.parametrize(
    ("line_text", "problem", "fix"),
    [
        ("max_loaded_models = 0", "0 is out of range", "at least 1"),
        ("max_loaded_models = 1.0", "expected an integer, got a float", "max_loaded_models = 2"),
        ("memory_budget_gib = 0", "0 is out of range", "greater than 0"),
        ('memory_budget_gib = "8G"', "expected a number, got a string", "memory_budget_gib"),
    ],
)
def test_bad_host_limits(
    cwd: Path, env: dict[str, str], line_text: str, problem: str, fix: str
) -> None:
    message = error(cwd, env, HOST + line_text + "\n")
    assert_error(message, 4, "hosts[0]." + line_text.split(" =")[0], problem, fix)


def test_bad_auto_pull(cwd: Path, env: dict[str, str]) -> None:
    message = error(cwd, env, '[gateway]\nport = 8081\nauto_pull = "no"\n')
    assert_error(message, 3, "gateway.auto_pull", 'expected a boolean, got a string ("no")')


def test_a_quantized_v_cache_with_flash_attention_is_fine(cwd: Path, env: dict[str, str]) -> None:
    text = MODEL + 'cache_type_v = "q8_0"\nflash_attn = true\n'
    assert load(cwd, env, text).models["m"].cache_type_v == "q8_0"
    message = error(cwd, env, MODEL + 'cache_type_v = "q8_0"\nflash_attn = false\n')
    assert_error(message, 3, "models.m.cache_type_v", "needs flash_attn = true")


# -- durations, shared with --keep-alive -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(" 5m ", 300.0), ("1h2m3s", 3723.0), ("+5", 5.0), (".5s", 0.5), (0, 0.0), (-7, -1.0)],
)
def test_duration_seconds_accepts(value: object, seconds: float) -> None:
    assert duration_seconds(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "5 m",
        "5M",
        "m5",
        "1e3",
        "inf",
        "nan",
        "1h-2m",
        "--1",
        True,
        None,
        [1],
        float("nan"),
    ],
)
def test_duration_seconds_refuses(value: object) -> None:
    assert duration_seconds(value) is None


# -- through the CLI -------------------------------------------------------------------------


def cli(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(argv), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(("line_text", "problem", "fix"), BAD_MODEL_VALUES[::4])
def test_profiles_check_names_the_bad_value_and_exits_2(
    cwd: Path, env: dict[str, str], line_text: str, problem: str, fix: str
) -> None:
    path = cwd / "profiles" / "p.toml"
    path.write_text(MODEL + 'file = "x.gguf"\n' + line_text + "\n", encoding="utf-8")
    code, out, err = cli(env, "profiles", "check", str(path))
    assert code == 2 and not out
    first = err.splitlines()[0]
    assert first.startswith(f"bitinglip: {path}:4: models.m."), first
    assert problem in first and fix in first


def test_profiles_show_prints_the_new_keys(cwd: Path, env: dict[str, str]) -> None:
    path = cwd / "profiles" / "p.toml"
    text = MODEL + 'gpu_layers = 8\nkeep_alive = "2m"\ntensor_split = [1, 3]\n\n'
    text += HOST + 'max_loaded_models = 3\n\n[serving]\nplacement = "rotation"\n'
    path.write_text(text, encoding="utf-8")
    code, out, _ = cli(env, "profiles", "show", "--json", str(path))
    assert code == 0
    data = json.loads(out)
    model = data["models"]["m"]
    assert (model["gpu_layers"], model["keep_alive"], model["tensor_split"]) == (8, 120.0, [1, 3])
    assert (model["n_ctx"], model["parallel"], model["min_replicas"]) == (4096, 1, 0)
    assert data["serving"] == {
        "placement": "rotation",
        "scale_out_queue_depth": 4,
        "keep_alive": 300,
    }
    assert data["hosts"][0]["max_loaded_models"] == 3
    assert data["hosts"][0]["memory_budget_gib"] is None
    assert data["gateway"]["auto_pull"] is True
    code, out, _ = cli(env, "profiles", "show", str(path))
    assert code == 0 and "serving" in out and "'min_replicas': 0" in out


def test_the_lab_example_sets_the_serving_keys(env: dict[str, str]) -> None:
    lab = load_profile(str(Path(__file__).parents[2] / "profiles" / "lab.example.toml"), env=env)
    assert lab.serving == ServingConfig("model", 8, 900.0)
    qwen = lab.models["qwen2-5-0-5b"]
    assert (qwen.n_ctx, qwen.parallel, qwen.keep_alive, qwen.min_replicas) == (8192, 8, -1.0, 1)
    assert {h.name: h.max_loaded_models for h in lab.hosts}["gpu-a"] == 3
