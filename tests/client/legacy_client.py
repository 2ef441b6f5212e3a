#!/usr/bin/env python3
"""Command-line driver around the real LEGACY Anki library (pip `anki==2.1.56`).

Anki 2.1.56 is the last release that speaks the legacy sync protocol (v10:
multipart forms, gzip or raw bodies, `GET /msync/begin`). The integration
tests in tests/it/legacy_sync.rs run this with the `anki2156` venv made by
tests/setup-venv.sh, next to tests/client/anki_client.py (the current client)
on the same account. Every sync goes through 2.1.56's own Rust sync client,
called the way its desktop app (aqt 2.1.56) calls it.

2.1.56 takes no endpoint argument: its backend reads the environment
variables SYNC_ENDPOINT (collection, `<url>sync/`) and SYNC_ENDPOINT_MEDIA
(media, `<url>msync/`) on every request, so --endpoint only sets those.

Each subcommand prints one JSON value on stdout and exits 0. On failure it
prints one JSON object on the last line of stderr and exits non-zero, as the
current driver does:
    {"error": "SyncError", "kind": "AUTH", "message": "..."}

Subcommands:
    login --endpoint URL --user U --password P
    sync --path P --endpoint .. --user .. --password ..   normal sync; prints
                                   {"required": NO_CHANGES|FULL_SYNC|FULL_UPLOAD|...}
    full-upload / full-download --path P --endpoint .. --user .. --password ..
    dump --path P                  all content, in the current driver's shape
    count --path P                 row counts of the main tables
    run --path P --script NAME [--arg K=V]...   tests/client/legacy_scenarios/NAME.py
    media-add --path P --src DIR   add DIR's files through the media manager
    media-remove --path P --name N ...   trash media files
    media-sync --path P --endpoint .. --user .. --password ..
    media-list --path P            {name: sha1} of the media folder
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable

from driver_common import (
    COL_EXCLUDED,
    TABLE_ORDER,
    Failure,
    fail,
    media_add,
    media_listing,
    object_sections,
    plain,
    scenario,
    table_counts,
)


def set_endpoint(url: str) -> None:
    # Must happen before the first request; 2.1.56 reads both variables in
    # its HTTP clients (rslib/src/sync/http_client.rs, media/sync.rs).
    base = url if url.endswith("/") else url + "/"
    os.environ["SYNC_ENDPOINT"] = base + "sync/"
    os.environ["SYNC_ENDPOINT_MEDIA"] = base + "msync/"


def pre_parse_endpoint() -> None:
    # Set the endpoint before `anki` is imported, in case anything reads it
    # at load time.
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--endpoint" and i + 1 < len(argv):
            set_endpoint(argv[i + 1])
        elif arg.startswith("--endpoint="):
            set_endpoint(arg.split("=", 1)[1])


pre_parse_endpoint()

from anki.collection import Collection  # noqa: E402
from anki.errors import SyncError  # noqa: E402
from anki.sync_pb2 import SyncCollectionResponse  # noqa: E402


def with_collection(path: str, fn: Callable[[Collection], Any]) -> Any:
    col = Collection(path)
    try:
        return fn(col)
    finally:
        # Saves (trx=False) and closes without downgrading, as aqt does when
        # switching profiles.
        col.close()


def login(col: Collection, args: argparse.Namespace):
    return col.sync_login(args.user, args.password)


# ---------------------------------------------------------------- sync


def cmd_login(args: argparse.Namespace) -> Any:
    # sync_login needs an open collection (for its backend); use a throwaway one.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "login.anki2")
        auth = with_collection(path, lambda col: login(col, args))
    return {"hkey": auth.hkey}


def cmd_sync(args: argparse.Namespace) -> Any:
    def run(col: Collection) -> Any:
        auth = login(col, args)
        # As aqt 2.1.56's sync_collection: leave the Python-side transaction
        # before the backend syncs, begin a new one after.
        col.save(trx=False)
        try:
            out = col.sync_collection(auth)
        finally:
            col.db.begin()
        return {
            "required": SyncCollectionResponse.ChangesRequired.Name(out.required),
            "host_number": out.host_number,
            "server_message": out.server_message,
        }

    return with_collection(args.path, run)


def full_sync(args: argparse.Namespace, upload: bool) -> Any:
    if upload and not os.path.exists(args.path):
        raise Failure(f"{args.path} does not exist")

    def run(col: Collection) -> Any:
        auth = login(col, args)
        started = time.monotonic()
        # As aqt 2.1.56: the backend closes (downgrading to schema 11 for an
        # upload) and reopens the collection itself; Python drops its handle
        # first and reattaches after.
        col.close_for_full_sync()
        try:
            if upload:
                col.full_upload(auth)
            else:
                col.full_download(auth)
        finally:
            col.reopen(after_full_sync=True)
        result = table_counts(col)
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    return with_collection(args.path, run)


def cmd_full_upload(args: argparse.Namespace) -> Any:
    return full_sync(args, upload=True)


def cmd_full_download(args: argparse.Namespace) -> Any:
    return full_sync(args, upload=False)


# ---------------------------------------------------------------- dump

# The same shape as anki_client.py's `dump`, so a test can compare a legacy
# device with a current one. The same values are left out, for the same
# reason (a full sync changes them on one side only): COL_EXCLUDED.
# Nothing else is normalised here: the dump shows what 2.1.56 holds. What
# legitimately differs from a 26.9 device holding the same collection
# (observed against the official server; tolerated, exactly and only, by
# tests/it/legacy_sync.rs `first_difference`):
#   * keys 26.9 adds to the library JSON of objects a 2.1.56 device created,
#     at their defaults: decks[].desiredRetention; notetypes[].flds[].id, tag,
#     excludeFromSearch, preventDeletion; notetypes[].tmpls[].id; deck config
#     FSRS/easy-days/audio keys. (Keys 2.1.56 *received* it keeps verbatim.)
#   * cards[].data loses "lrt" (26.9's last review time) when 2.1.56 applies
#     a card it received in a normal sync; it re-serialises the known fields.
#   * raw protobuf blobs in `tables` (decks.common/kind, deck_config, notetypes,
#     fields, templates .config): 2.1.56 keeps unknown fields as JSON in its
#     "other" bytes; their content is compared through the JSON sections.
#   * tables.config mtime_secs/usn (a schema-11 download has no per-key
#     times), and graves/tags usn (per-device, as between two 26.9 devices).

NOTE_COLS = ("id", "guid", "mid", "mod", "usn", "tags", "flds", "sfld", "csum", "flags", "data")
CARD_COLS = (
    "id", "nid", "did", "ord", "mod", "usn", "type", "queue", "due", "ivl", "factor",
    "reps", "lapses", "left", "odue", "odid", "flags", "data",
)
REVLOG_COLS = ("id", "cid", "usn", "ease", "ivl", "lastIvl", "factor", "time", "type")


def rows_as_dicts(col: Collection, table: str) -> list[dict[str, Any]]:
    names = list(col.db.list(f"select name from pragma_table_info('{table}')"))
    rows = col.db.all(f"select {', '.join(names)} from {table} order by {TABLE_ORDER[table]}")
    return [dict(zip(names, map(plain, row))) for row in rows]


def select(col: Collection, table: str, cols: tuple[str, ...]) -> list[dict[str, Any]]:
    sql = f"select {', '.join(cols)} from {table} order by id"
    return [dict(zip(cols, row)) for row in col.db.all(sql)]


def cmd_dump(args: argparse.Namespace) -> Any:
    if not os.path.exists(args.path):
        raise Failure(f"{args.path} does not exist")

    def run(col: Collection) -> Any:
        row = col.db.first("select id, crt, mod, scm, ver, dty, usn, ls from col")
        col_info = dict(zip(("id", "crt", "mod", "scm", "ver", "dty", "usn", "ls"), row))
        for key in COL_EXCLUDED:
            del col_info[key]
        return {
            "col": col_info,
            "notes": select(col, "notes", NOTE_COLS),
            "cards": select(col, "cards", CARD_COLS),
            "revlog": select(col, "revlog", REVLOG_COLS),
            **object_sections(col, rows_as_dicts),
        }

    return with_collection(args.path, run)


def cmd_count(args: argparse.Namespace) -> Any:
    if not os.path.exists(args.path):
        raise Failure(f"{args.path} does not exist")
    return with_collection(args.path, table_counts)


# ---------------------------------------------------------------- run


SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "legacy_scenarios")


def cmd_run(args: argparse.Namespace) -> Any:
    """Runs tests/client/legacy_scenarios/NAME.py against the collection
    (created if missing). The script sees `col`, `args` (the --arg KEY=VALUE
    pairs) and this module's globals, and may set `result`."""
    return with_collection(args.path, scenario(SCENARIOS, args, globals()))


# ---------------------------------------------------------------- media


def cmd_media_add(args: argparse.Namespace) -> Any:
    """Adds every file in --src (by name order); prints {given name: stored name}."""

    return with_collection(args.path, lambda col: media_add(col, args.src))


def cmd_media_remove(args: argparse.Namespace) -> Any:
    """Moves the named files to the media trash, as deleting them in the app does."""

    def run(col: Collection) -> Any:
        col.media.trash_files(list(args.name))
        return {"removed": sorted(args.name)}

    return with_collection(args.path, run)


def cmd_media_sync(args: argparse.Namespace) -> Any:
    """A media sync as aqt 2.1.56 runs it after a collection sync: blocking
    `sync_media` (begin → mediaChanges → downloadFiles/uploadChanges →
    mediaSanity). Prints the time taken and the last progress report."""

    def run(col: Collection) -> Any:
        auth = login(col, args)
        started = time.monotonic()
        col.sync_media(auth)
        seconds = round(time.monotonic() - started, 3)
        progress = col.latest_progress()
        result: dict[str, Any] = {"seconds": seconds}
        if progress.HasField("media_sync"):
            p = progress.media_sync
            result["progress"] = {"checked": p.checked, "added": p.added, "removed": p.removed}
        return result

    return with_collection(args.path, run)


def cmd_media_list(args: argparse.Namespace) -> Any:
    """{name: sha1} of every file in the collection's media folder."""
    return media_listing(with_collection(args.path, lambda col: col.media.dir()))


# ---------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    def command(name: str, fn: Callable[[argparse.Namespace], Any], *, path=True, server=False):
        p = sub.add_parser(name)
        p.set_defaults(fn=fn)
        if path:
            p.add_argument("--path", required=True)
        if server:
            p.add_argument("--endpoint", required=True)
            p.add_argument("--user", required=True)
            p.add_argument("--password", required=True)
        return p

    command("login", cmd_login, path=False, server=True)
    command("sync", cmd_sync, server=True)
    command("full-upload", cmd_full_upload, server=True)
    command("full-download", cmd_full_download, server=True)
    command("dump", cmd_dump)
    command("count", cmd_count)
    p = command("run", cmd_run)
    p.add_argument("--script", required=True)
    p.add_argument("--arg", action="append", default=[], help="KEY=VALUE passed to the script")
    p = command("media-add", cmd_media_add)
    p.add_argument("--src", required=True, help="folder whose files are added")
    p = command("media-remove", cmd_media_remove)
    p.add_argument("--name", action="append", required=True)
    command("media-sync", cmd_media_sync, server=True)
    command("media-list", cmd_media_list)
    return top


def main() -> int:
    args = parser().parse_args()
    if getattr(args, "endpoint", None):
        set_endpoint(args.endpoint)
    try:
        result = args.fn(args)
    except SyncError as err:
        return fail({"error": "SyncError", "kind": err.kind.name, "message": str(err)})
    except Failure as err:
        return fail({"error": "Failure", "message": str(err)})
    except Exception as err:  # any library error: report its type, never hide it
        return fail({"error": type(err).__name__, "message": str(err)})
    json.dump(result, sys.stdout, ensure_ascii=False, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
