"""Job files: a JSONL batch read one line at a time, each line checked and turned into a row.

A line is either a BitingLip task object or a line of the OpenAI Batch API format (`custom_id`,
`method`, `url`, `body`), so existing batch files run unchanged. One file holds one format. A
file carries only work (`JOB_KINDS`: echo, generate, chat, embed): a file someone hands you
cannot pull from a URL of its choosing or remove model files.

`JobFile.rows()` reads the file once in constant memory (one line held at a time, no list of
lines) and yields one plain tuple per line, in `ROW` order (the payload and labels as decoded),
ready for the insert: no object per line beyond the decoded JSON. The first bad line raises
`InputError` naming FILE:LINE. The one check that needs the whole file, an id used twice, is
made where the rows are staged (`job_stage.JobStage`), so a file is queued whole or not at all.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from bitinglip_agent.protocol import JOB_KINDS, TaskKind

from bitinglip.control.queue.intake import check_payload
from bitinglip.errors import InputError

# What a row holds, in order (NULL max_attempts: the profile's default).
ROW = ("line_no", "kind", "priority", "payload", "model", "host", "labels", "custom_id", "attempts")
Row = tuple[
    int,
    str,
    int,
    dict[str, Any],
    str | None,
    str | None,
    dict[str, Any] | None,
    str | None,
    int | None,
]
# Checks a line's model and host (the model's canonical name back), raising InputError.
Check = Callable[[str | None, str | None, str], str | None]

PARAMS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "repeat_penalty")
NATIVE_KEYS = frozenset(
    {
        "kind",
        "id",
        "payload",
        "model",
        "prompt",
        "messages",
        "input",
        "priority",
        "max_attempts",
        "host",
        "labels",
        *PARAMS,
    }
)
OPENAI_KEYS = frozenset({"custom_id", "method", "url", "body"})
OPENAI_URLS = {
    "/v1/chat/completions": TaskKind.CHAT.value,
    "/v1/completions": TaskKind.GENERATE.value,
    "/v1/embeddings": TaskKind.EMBED.value,
}
BODY_FIELD = {TaskKind.CHAT: "messages", TaskKind.GENERATE: "prompt", TaskKind.EMBED: "input"}
ONLY_WORK = " (a job file carries only work: pull and remove models with `bitinglip models`)"
PROGRESS_EVERY = 8192  # lines between calls of `progress`


class JobFile:
    """One JSONL batch file. `format` is known once `rows()` has read a line."""

    def __init__(
        self,
        path: Path,
        check: Check | None = None,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self.path = path
        self.check = check
        self.progress = progress  # (lines, bytes read, file size) every PROGRESS_EVERY lines
        self.format: str | None = None

    def rows(self) -> Iterator[Row]:
        """Every task line of the file as a row, checked; InputError at the first bad line."""
        checked: dict[tuple[str | None, str | None], str | None] = {}  # (model, host): model
        try:
            raw = self.path.open("rb")
        except FileNotFoundError:
            raise InputError(
                f"{self.path}: no such file; give the path of a JSONL batch file"
            ) from None
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read it: {exc.strerror or exc}") from None
        with raw, io.TextIOWrapper(raw, encoding="utf-8") as file:
            size = os.fstat(raw.fileno()).st_size
            line_no = 0
            for line_no, line in enumerate(_lines(file, self.path), start=1):
                if self.progress is not None and line_no % PROGRESS_EVERY == 0:
                    self.progress(line_no, raw.tell(), size)
                if line.isspace():
                    continue
                row = self._row(line, line_no)
                key = (row[4], row[5])
                if key == (None, None):
                    yield row
                    continue
                if key not in checked:
                    checked[key] = self._check(*key, line_no)
                model = checked[key]
                if model != row[4]:  # by its canonical name
                    row = (row[0], row[1], row[2], row[3], model, row[5], row[6], row[7], row[8])
                yield row
            if self.progress is not None:
                self.progress(line_no, size, size)
        if self.format is None:
            raise InputError(f"{self.path}: no tasks in the file; put one JSON object per line")

    def _row(self, line: str, line_no: int) -> Row:
        try:
            obj = _decode(line)
        except ValueError as exc:  # a JSONDecodeError, or NaN or Infinity (not JSON)
            where = f"{self.path}:{line_no}"
            if isinstance(exc, json.JSONDecodeError):
                raise InputError(
                    f"{where}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from None
            raise InputError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            where = f"{self.path}:{line_no}"
            raise InputError(f"{where}: each line must be a JSON object, not {type(obj).__name__}")
        line_fmt = "openai" if "custom_id" in obj or "url" in obj else "bitinglip"
        if line_fmt != self.format:
            if self.format is not None:
                where = f"{self.path}:{line_no}"
                raise InputError(
                    f"{where}: a {line_fmt} line in a {self.format} file; use one format per file"
                )
            self.format = line_fmt
        if line_fmt == "openai":
            return _openai_row(obj, line_no, self.path)
        return _native_row(obj, line_no, self.path)

    def _check(self, model: str | None, host: str | None, line_no: int) -> str | None:
        if self.check is None:
            return model
        return self.check(model, host, f"{self.path}:{line_no}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_decode = json.JSONDecoder(parse_constant=_no_constant).decode  # one decoder for every line


def _lines(file: TextIO, path: Path) -> Iterator[str]:
    try:
        yield from file
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}:{_bad_line(path)}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it: {exc.strerror or exc}") from None


def _bad_line(path: Path) -> int:
    """The number of the first line that is not UTF-8 (the text reader says only the block)."""
    with path.open("rb") as raw:
        for line_no, line in enumerate(raw, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return line_no
    return 0


def _native_row(obj: dict[str, Any], line_no: int, path: Path) -> Row:
    if not obj.keys() <= NATIVE_KEYS:
        unknown = sorted(obj.keys() - NATIVE_KEYS)[0]
        known = ", ".join(sorted(NATIVE_KEYS))
        raise InputError(f"{path}:{line_no}: unknown key {unknown!r}; known keys: {known}")
    kind = obj.get("kind")
    if kind not in JOB_KINDS:
        raise InputError(
            f"{path}:{line_no}: kind must be one of {', '.join(JOB_KINDS)}, not {kind!r}{ONLY_WORK}"
        )
    payload = obj.get("payload")
    if payload is None:
        payload = {}
    elif not isinstance(payload, dict):
        _typed(obj, "payload", dict, path, line_no)
    model = obj.get("model")
    if kind in BODY_FIELD:
        field = BODY_FIELD[kind]
        if field not in obj:
            raise InputError(f"{path}:{line_no}: a {kind} line needs {field!r}")
        payload = {**payload, field: _check_body_field(kind, obj[field], path, line_no)}
        _typed(obj, "model", str, path, line_no, required=True)
    elif model is not None:
        _typed(obj, "model", str, path, line_no)
    if len(obj) > 2 or "payload" not in obj:  # more than kind and payload: the rarer keys
        return _native_rest(obj, kind, payload, line_no, path)
    if payload:
        _check_payload(payload, path, line_no)
    return (line_no, kind, 0, payload, model, None, None, None, None)


def _native_rest(
    obj: dict[str, Any], kind: str, payload: dict[str, Any], line_no: int, path: Path
) -> Row:
    params = {p: obj[p] for p in PARAMS if p in obj}
    if params:
        payload = {**payload, **params}
    if payload:
        _check_payload(payload, path, line_no)
    custom_id = obj.get("id")
    if custom_id is not None and (
        not isinstance(custom_id, (str, int)) or isinstance(custom_id, bool)
    ):
        raise InputError(f"{path}:{line_no}: id must be a string or a number")
    labels = _typed(obj, "labels", dict, path, line_no)
    attempts = _typed(obj, "max_attempts", int, path, line_no)
    if attempts is not None and attempts < 1:
        raise InputError(f"{path}:{line_no}: max_attempts must be at least 1, not {attempts}")
    return (
        line_no,
        kind,
        _typed(obj, "priority", int, path, line_no) or 0,
        payload,
        obj.get("model"),
        _typed(obj, "host", str, path, line_no),
        labels or None,
        None if custom_id is None else str(custom_id),
        attempts,
    )


def _openai_row(obj: dict[str, Any], line_no: int, path: Path) -> Row:
    where = f"{path}:{line_no}"
    if obj.keys() != OPENAI_KEYS:
        missing = sorted(OPENAI_KEYS - obj.keys())
        if missing:
            raise InputError(f"{where}: an OpenAI batch line needs {', '.join(missing)}")
        unknown = sorted(obj.keys() - OPENAI_KEYS)[0]
        raise InputError(f"{where}: unknown key {unknown!r} in an OpenAI batch line")
    custom_id = _typed(obj, "custom_id", str, path, line_no, required=True)
    if obj["method"] != "POST":
        raise InputError(f'{where}: method must be "POST", not {obj["method"]!r}')
    url = obj["url"]
    kind = OPENAI_URLS.get(url) if isinstance(url, str) else None
    if kind is None:
        raise InputError(
            f"{where}: url {url!r} is not supported; use one of {', '.join(OPENAI_URLS)}"
        )
    body = _typed(obj, "body", dict, path, line_no, required=True)
    if "kind" in body:  # the url alone says what runs
        raise InputError(f"{where}: body must not name a kind; the url sets it{ONLY_WORK}")
    model = _typed(body, "model", str, path, line_no, required=True, inside="body")
    field = BODY_FIELD[TaskKind(kind)]
    if field not in body:
        raise InputError(f"{where}: body needs {field!r} for {url}")
    _check_body_field(kind, body[field], path, line_no)
    # Only what a run reads: the input and the generation parameters (other keys are dropped).
    payload = {k: body[k] for k in (field, *PARAMS) if k in body}
    return (line_no, kind, 0, payload, model, None, None, custom_id, None)


def _check_body_field(kind: str, value: Any, path: Path, line_no: int) -> Any:
    where = f"{path}:{line_no}"
    if kind == TaskKind.GENERATE and not isinstance(value, str):
        raise InputError(f"{where}: prompt must be a string")
    if kind == TaskKind.CHAT and not (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value)
    ):
        raise InputError(
            f'{where}: messages must be a non-empty list of {{"role", "content"}} objects'
        )
    if kind == TaskKind.EMBED and not isinstance(value, (str, list)):
        raise InputError(f"{where}: input must be a string or a list of strings")
    return value


def _check_payload(payload: dict[str, Any], path: Path, line_no: int) -> None:
    try:
        check_payload(payload)
    except InputError as exc:
        raise InputError(f"{path}:{line_no}: {exc}") from None


def _typed(
    obj: dict[str, Any],
    key: str,
    typ: type,
    path: Path,
    line_no: int,
    required: bool = False,
    inside: str = "",
) -> Any:
    value = obj.get(key)
    where = f"{path}:{line_no}: {inside}" if inside else f"{path}:{line_no}"
    if value is None:
        if required:
            raise InputError(f"{where}: {key!r} is required")
        return None
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise InputError(f"{where}: {key!r} must be a {typ.__name__}, not {type(value).__name__}")
    return value
