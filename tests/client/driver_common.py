"""What the two client drivers share: anki_client.py (Anki 26.9, run in one
venv) and legacy_client.py (Anki 2.1.56, another venv) import this module
from their own folder. It holds only code that works the same on both
library versions: the dump's table order, value plumbing, row counts, media
folder helpers and the error line format."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Callable


class Failure(Exception):
    """A failure the driver detected itself (not raised by the library)."""


def fail(info: dict[str, Any]) -> int:
    """Prints the error object as the last stderr line; the exit status."""
    print(json.dumps(info, ensure_ascii=False), file=sys.stderr)
    return 1


# What `dump` leaves out, and why: only values a full sync legitimately
# changes on one side and not the other.
#   col.mod, col.usn, col.ls: the server bumps usn and sets mod on download,
#       the client sets ls = mod after a full sync.
# Everything else (including per-object usn and mod values, which a full
# sync copies verbatim) is kept.
COL_EXCLUDED = ("mod", "usn", "ls")

TABLE_ORDER = {
    "config": "key",
    "deck_config": "id",
    "decks": "id",
    "fields": "ntid, ord",
    "graves": "oid, type, usn",
    "notetypes": "id",
    "tags": "tag",
    "templates": "ntid, ord",
}


def plain(value: Any) -> Any:
    # DBProxy hands blobs over as lists of byte values.
    if isinstance(value, list):
        return {"hex": bytes(value).hex()}
    return value


def sorted_by_id(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: item["id"])


def table_counts(col: Any) -> dict[str, int]:
    return {
        name: col.db.scalar(f"select count() from {name}")
        for name in ("notes", "cards", "revlog", "decks", "deck_config", "notetypes", "graves")
    }


def media_add(col: Any, src: str) -> dict[str, str]:
    """Adds every file in `src` (by name order) through the media manager;
    {given name: stored name}."""
    stored = {}
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name), "rb") as f:
            stored[name] = col.media.write_data(name, f.read())
    return stored


def media_listing(folder: str) -> dict[str, str]:
    """{name: sha1} of every file in a media folder."""
    listing = {}
    for name in sorted(os.listdir(folder)):
        full = os.path.join(folder, name)
        if os.path.isfile(full):
            with open(full, "rb") as f:
                listing[name] = hashlib.sha1(f.read()).hexdigest()
    return listing


def object_sections(col: Any, rows_as_dicts: Callable[[Any, str], list]) -> dict[str, Any]:
    """The parts of `dump` both library versions read the same way: the
    library's JSON of decks, presets, notetypes and config, the tags, and
    the raw rows of the object tables (`rows_as_dicts` is the driver's)."""
    return {
        "decks": sorted_by_id(col.decks.all()),
        "deck_configs": sorted_by_id(col.decks.all_config()),
        "notetypes": sorted_by_id(col.models.all()),
        "config": col.all_config(),
        "tags": sorted(col.tags.all()),
        "tables": {name: rows_as_dicts(col, name) for name in TABLE_ORDER},
    }


def scenario(folder: str, args: Any, scope: dict[str, Any]) -> Callable[[Any], Any]:
    """Compiles `folder`/NAME.py (`args.script`) and returns a function that
    runs it on a collection: the script sees `scope` (the driver's globals),
    `col` and `args` (the --arg KEY=VALUE pairs), and may set `result`."""
    script = os.path.join(folder, args.script + ".py")
    if not os.path.exists(script):
        raise Failure(f"no scenario {args.script!r} in {folder}")
    params = dict(pair.split("=", 1) for pair in args.arg)
    with open(script, encoding="utf-8") as f:
        code = compile(f.read(), script, "exec")

    def run(col: Any) -> Any:
        names = dict(scope)
        names.update(col=col, args=params, result=None)
        exec(code, names)
        return names["result"]

    return run
