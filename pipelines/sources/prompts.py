"""Read prompts from a .txt, .jsonl or .parquet file at any fsspec URL."""

from __future__ import annotations

import json

import fsspec

from pipelines.errors import ConfigError

FIELD = "prompts.file"


def read_prompts(url: str) -> list[str]:
    try:
        with fsspec.open(url, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(FIELD, "", detail=f"prompt file {url!r} does not exist") from None
    suffix = url.rsplit(".", 1)[-1].lower() if "." in url.rsplit("/", 1)[-1] else ""
    if suffix == "parquet":
        prompts = _parquet_prompts(raw, url)
    elif suffix == "jsonl":
        prompts = [_jsonl_prompt(line, n, url) for n, line in _text_lines(raw, url)]
    elif suffix in ("txt", ""):
        prompts = [line for _, line in _text_lines(raw, url)]
    else:
        raise ConfigError(FIELD, "", detail=f"{url!r}: expected a .txt, .jsonl or .parquet file")
    if not prompts:
        raise ConfigError(FIELD, "", detail=f"prompt file {url!r} holds no prompts")
    return prompts


def _text_lines(raw: bytes, url: str):
    """(line number, stripped line) for every non-blank line; invalid UTF-8 names its line."""
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ConfigError(
                FIELD, "", detail=f"{url}:{number}: not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
            ) from None
        if text:
            yield number, text


def _jsonl_prompt(line: str, number: int, url: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(FIELD, "", detail=f"{url}:{number}: not valid JSON ({exc.msg})") from None
    prompt = record.get("prompt") if isinstance(record, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(FIELD, "", detail=f'{url}:{number}: expected an object with a non-empty "prompt" string')
    return prompt


def _parquet_prompts(raw: bytes, url: str) -> list[str]:
    # lazy: keeps pyarrow out of processes that never call this
    from pipelines.tables import table_from_bytes

    try:
        table = table_from_bytes(raw, ["prompt"])
    except Exception as exc:  # pyarrow raises several types for missing columns and bad files
        raise ConfigError(FIELD, "", detail=f"{url}: expected a Parquet file with a 'prompt' column ({exc})") from None
    prompts = table.column("prompt").to_pylist()
    for row, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(FIELD, "", detail=f"{url}: row {row} has no prompt (expected a non-empty string)")
    return prompts
