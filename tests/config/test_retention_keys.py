"""`[retention]`: defaults, durations with days and "forever", and every bad value as one
`file:line` error. Real profile files in `tmp_path`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bitinglip.config import RetentionConfig, load_profile
from bitinglip.config_retention import retention_seconds, retention_text
from bitinglip.errors import ConfigError

README = (Path(__file__).parent.parent.parent / "README.md").read_text()


def profile_at(tmp_path: Path, text: str) -> RetentionConfig:
    path = tmp_path / "p.toml"
    path.write_text(text)
    env = {"XDG_CONFIG_HOME": str(tmp_path / "c"), "XDG_DATA_HOME": str(tmp_path / "d")}
    return load_profile(str(path), env=env, cwd=tmp_path).retention


def test_the_defaults_keep_a_week_of_outputs_and_a_month_of_rows(tmp_path: Path) -> None:
    kept = profile_at(tmp_path, "")
    assert kept == RetentionConfig() and (kept.outputs, kept.tasks) == (7 * 86400, 30 * 86400)
    assert kept.to_dict() == {"outputs": "7d", "tasks": "30d"}


@pytest.mark.parametrize(
    ("text", "outputs", "tasks"),
    [
        ('outputs = "1d12h"', 36 * 3600, 30 * 86400),
        ('outputs = "90m"\ntasks = "2h"', 5400, 7200),
        ('outputs = 3600\ntasks = "forever"', 3600, math.inf),
        ('outputs = "forever"', math.inf, math.inf),  # rows follow: never shorter
        ('outputs = "45d"', 45 * 86400, 45 * 86400),
    ],
)
def test_durations_with_days_and_forever(
    tmp_path: Path, text: str, outputs: float, tasks: float
) -> None:
    kept = profile_at(tmp_path, f"[retention]\n{text}\n")
    assert (kept.outputs, kept.tasks) == (outputs, tasks)
    json.dumps(kept.to_dict())  # "forever", never Infinity


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ('oputs = "7d"', 2, "retention.oputs: unknown key; known keys: outputs, tasks"),
        ('outputs = "a week"', 2, 'retention.outputs: "a week" is not a duration; use'),
        ('outputs = "-1d"', 2, 'retention.outputs: "-1d" is not a duration'),
        ("outputs = true", 2, "retention.outputs: true is not a duration"),
        ('outputs = "30s"', 2, 'retention.outputs: "30s" is shorter than a minute'),
        ('outputs = "7d"\ntasks = "1d"', 3, "retention.tasks: rows kept 1d are shorter than"),
        ('outputs = "forever"\ntasks = "30d"', 3, "outputs (forever)"),
    ],
)
def test_bad_values_are_one_line_naming_the_line(
    tmp_path: Path, text: str, line: int, says: str
) -> None:
    with pytest.raises(ConfigError) as err:
        profile_at(tmp_path, f"[retention]\n{text}\n")
    message = str(err.value)
    assert message.startswith(f"p.toml:{line}: ") and says in message, message
    assert "\n" not in message and "; " in message


def test_retention_text_round_trips() -> None:
    for text in ("7d", "36h", "90m", "45s", "forever", "1.5s"):
        seconds = retention_seconds(text)
        assert seconds is not None and retention_text(seconds) == text
    assert retention_seconds("1d12h") == 36 * 3600 and retention_seconds("soon") is None


def test_every_retention_key_is_in_the_readme_and_the_default_profile() -> None:
    shipped = (Path(__file__).parent.parent.parent / "profiles" / "default.toml").read_text()
    for key in ("outputs", "tasks"):
        assert f"`retention.{key}`" in README
        assert f"\n{key} = " in shipped.split("[retention]", 1)[1]
