"""Dated outputs: `{date}` in output.url and prompts.file, filled in by the spec loader.

    output.url: s3://bucket/nightly/{date}       one output per run date (UTC today, or --date)

`fill_dates` is the only place where {date} is resolved; jobs/ops/nightly.py publishes and prunes
the dated outputs after a run.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
from dataclasses import dataclass

from pipelines.errors import ConfigError

PLACEHOLDER = "{date}"
DATE_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Spec fields that may hold {date}: the output and the inputs it is made from.
DATED_FIELDS = (("output", "url"), ("prompts", "file"))
LATEST_FILE = "latest.json"


@dataclass(frozen=True)
class RunDate:
    date: str  # YYYY-MM-DD, UTC
    output_template: str | None = None  # output.url before {date} was filled in, when it held one


def parse_date(text: str | None) -> str:
    """`--date` as given (a calendar date YYYY-MM-DD), or today's UTC date."""
    if text is None:
        return dt.datetime.now(dt.timezone.utc).date().isoformat()
    try:
        if not DATE_FORMAT.match(text):
            raise ValueError
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ConfigError("", "", detail=f"--date {text!r}: expected a calendar date YYYY-MM-DD, e.g. 2026-11-20") from None


def fill_dates(data: dict, date_text: str | None) -> RunDate:
    """Replace {date} in output.url and prompts.file of the parsed spec, in place.

    The only place where {date} is resolved; the spec loader calls it after --set overrides.
    """
    date = parse_date(date_text)
    template = None
    for section, key in DATED_FIELDS:
        node = data.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if isinstance(value, str) and PLACEHOLDER in value:
            if (section, key) == ("output", "url"):
                template = value
                DatedOutputs(value)  # checks where {date} stands
            node[key] = value.replace(PLACEHOLDER, date)
    return RunDate(date, template)


class DatedOutputs:
    """The outputs one `{date}` template makes: root/<segment with the date>/<rest>."""

    def __init__(self, template: str):
        head, sep, tail = template.partition(PLACEHOLDER)
        root, _, seg_head = head.rstrip().rpartition("/")
        seg_tail, _, rest = tail.partition("/")
        if not sep or PLACEHOLDER in tail or not root or "/" in seg_head:
            raise ConfigError(
                "output.url", "", detail=f"{template!r}: {{date}} must appear once, inside a path segment below a "
                "root folder, e.g. s3://bucket/nightly/{date}"
            )
        self.template, self.root, self.rest = template, root, rest
        self.segment = re.compile(re.escape(seg_head) + r"(\d{4}-\d{2}-\d{2})" + re.escape(seg_tail) + "$")

    def url(self, date: str) -> str:
        return self.template.replace(PLACEHOLDER, date)

    def latest_url(self) -> str:
        return f"{self.root}/{LATEST_FILE}"

    def dates(self, fs, root_path: str) -> list[str]:
        """Dates that have an entry under the root (not yet checked to be outputs)."""
        try:
            names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(root_path, detail=False, refresh=True)]
        except FileNotFoundError:
            return []
        return sorted({m.group(1) for n in names if (m := self.segment.match(n))})
