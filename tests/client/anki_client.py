#!/usr/bin/env python3
"""Command-line driver around the real Anki library (pip package `anki`).

The integration tests in tests/*.rs run this with the venv made by
tests/setup-venv.sh. It is the judge of compatibility: every sync goes through
the library's own Rust sync client, exactly as the desktop app's does.

Each subcommand prints one JSON value on stdout and exits 0. On failure it
prints one JSON object on the last line of stderr and exits non-zero:
    {"error": "SyncError", "kind": "AUTH", "message": "..."}
("kind" is present for sync errors only: AUTH or OTHER.)

Subcommands:
    make --path P --notes N [--seed S]   build a realistic collection
    login --endpoint URL --user U --password P
    sync --path P --endpoint URL --user U --password P
    full-upload / full-download --path P --endpoint URL --user U --password P
    dump --path P                        all content, for comparisons
    count --path P                       row counts of the main tables
    add-notes --path P --notes N [--seed S]  add plain notes to a collection
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from typing import Any, Callable

from anki.collection import AddNoteRequest, Collection
from anki.errors import SyncError
from anki.scheduler_pb2 import CardAnswer
from anki.sync_pb2 import SyncCollectionResponse

# Deck names used by `make`; notes are spread over them round-robin.
DECKS = ["Default", "Languages", "Languages::Spanish", "Science", "History"]
# The deck that gets the non-default deck config.
CONFIGURED_DECK = "Languages::Spanish"
NOTETYPE = "Lite Vocab"
WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima "
    "mike november oscar papa quebec romeo sierra tango uniform victor whiskey "
    "xray yankee zulu casa perro gato libro agua fuego tierra aire sol luna"
).split()
ADD_BATCH = 2000


class Failure(Exception):
    """A failure the driver detected itself (not raised by the library)."""


# ---------------------------------------------------------------- make


def add_custom_notetype(col: Collection) -> dict[str, Any]:
    mm = col.models
    nt = mm.new(NOTETYPE)
    for name in ("Word", "Meaning", "Example"):
        mm.add_field(nt, mm.new_field(name))
    forward = mm.new_template("Recognise")
    forward["qfmt"] = "<div class=word>{{Word}}</div>"
    forward["afmt"] = "{{FrontSide}}<hr id=answer>{{Meaning}}<br><i>{{Example}}</i>"
    backward = mm.new_template("Recall")
    backward["qfmt"] = "{{Meaning}}"
    backward["afmt"] = "{{FrontSide}}<hr id=answer>{{Word}}"
    mm.add_template(nt, forward)
    mm.add_template(nt, backward)
    nt["css"] = ".card { font-family: serif; color: #123456; }\n.word { font-size: 2em; }\n"
    nt["id"] = mm.add_dict(nt).id
    return mm.get(nt["id"])


def add_deck_config(col: Collection, deck_id: int) -> None:
    conf_id = col.decks.add_config_returning_id("Lite intensive")
    conf = col.decks.get_config(conf_id)
    conf["new"]["perDay"] = 9999
    conf["rev"]["perDay"] = 9999
    conf["new"]["delays"] = [2.0, 15.0]
    conf["maxTaken"] = 90
    col.decks.update_config(conf)
    deck = col.decks.get(deck_id)
    col.decks.set_config_id_for_deck_dict(deck, conf_id)


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def add_notes(col: Collection, count: int, rng: random.Random, deck_ids: list[int]) -> None:
    basic = col.models.by_name("Basic")
    custom = col.models.by_name(NOTETYPE)
    if basic is None or custom is None:
        raise Failure("Basic or custom notetype missing")
    batch: list[AddNoteRequest] = []
    for i in range(count):
        if i % 3 == 0:
            note = col.new_note(basic)
            note["Front"] = f"Q{i}: {sentence(rng, 4)}"
            note["Back"] = f"A{i}: {sentence(rng, 6)} <b>{rng.randint(0, 10**6)}</b>"
        else:
            note = col.new_note(custom)
            note["Word"] = f"{rng.choice(WORDS)}-{i}"
            note["Meaning"] = sentence(rng, 3)
            note["Example"] = sentence(rng, 8) + " \u00e9\u00e8\u00fc\u4e2d\u6587"
        note.tags = rng.sample(["verb", "noun", "hard", "lite::nested", "unicode_ü"], 2)
        batch.append(AddNoteRequest(note=note, deck_id=deck_ids[i % len(deck_ids)]))
        if len(batch) >= ADD_BATCH:
            col.add_notes(batch)
            batch = []
    if batch:
        col.add_notes(batch)


def review_some(col: Collection, answers: int, rng: random.Random, deck_ids: list[int]) -> int:
    """Answer up to `answers` cards through the v3 scheduler, spread over the
    decks (the queue only holds the current deck's cards); returns the count."""
    ratings = [CardAnswer.AGAIN, CardAnswer.HARD, CardAnswer.GOOD, CardAnswer.EASY]
    done = 0
    for index, deck_id in enumerate(deck_ids):
        col.decks.select(deck_id)
        share = answers * (index + 1) // len(deck_ids) - answers * index // len(deck_ids)
        for _ in range(share):
            queued = col.sched.get_queued_cards(fetch_limit=1)
            if not queued.cards:
                break
            qc = queued.cards[0]
            card = col.get_card(qc.card.id)
            card.start_timer()
            answer = col.sched.build_answer(
                card=card, states=qc.states, rating=rng.choice(ratings)
            )
            answer.milliseconds_taken = rng.randint(500, 30000)
            col.sched.answer_card(answer)
            done += 1
    col.decks.select(deck_ids[0])
    return done


def cmd_make(args: argparse.Namespace) -> Any:
    if os.path.exists(args.path):
        raise Failure(f"{args.path} already exists")
    rng = random.Random(args.seed)
    started = time.monotonic()
    col = Collection(args.path)
    try:
        add_custom_notetype(col)
        deck_ids = [col.decks.id(name) for name in DECKS]
        add_deck_config(col, col.decks.id(CONFIGURED_DECK))
        add_notes(col, args.notes, rng, deck_ids)
        col.set_config("ankiSyncLiteSeed", {"seed": args.seed, "notes": args.notes})
        # Scheduling changes beyond plain reviews: review-state cards with
        # intervals, flags, suspended and buried cards.
        cids = col.db.list("select id from cards order by id")
        sample = rng.sample(cids, min(len(cids), max(10, len(cids) // 20)))
        third = len(sample) // 3
        if sample:
            col.sched.set_due_date(sample[:third], "1-60!")
            col.set_user_flag_for_cards(3, sample[third : 2 * third])
            col.sched.suspend_cards(sample[2 * third : 2 * third + 5])
            col.sched.bury_cards(sample[2 * third + 5 : 2 * third + 8])
        reviewed = review_some(col, min(300, max(20, args.notes // 20)), rng, deck_ids)
        counts = table_counts(col)
    finally:
        col.close()
    counts["reviewed"] = reviewed
    counts["seconds"] = round(time.monotonic() - started, 3)
    return counts


def cmd_add_notes(args: argparse.Namespace) -> Any:
    rng = random.Random(args.seed)
    col = Collection(args.path)
    try:
        add_notes(col, args.notes, rng, [col.decks.id("Default")])
        return table_counts(col)
    finally:
        col.close()


# ---------------------------------------------------------------- sync


def endpoint_of(url: str) -> str:
    # The library joins method paths onto the endpoint; it must end with '/'.
    return url if url.endswith("/") else url + "/"


def with_collection(path: str, fn: Callable[[Collection], Any]) -> Any:
    col = Collection(path)
    try:
        return fn(col)
    finally:
        col.close()


def cmd_login(args: argparse.Namespace) -> Any:
    # sync_login needs an open collection (for its backend); use a throwaway one.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "login.anki2")
        auth = with_collection(
            path, lambda col: col.sync_login(args.user, args.password, endpoint_of(args.endpoint))
        )
    return {"hkey": auth.hkey}


def cmd_sync(args: argparse.Namespace) -> Any:
    def run(col: Collection) -> Any:
        auth = col.sync_login(args.user, args.password, endpoint_of(args.endpoint))
        out = col.sync_collection(auth, sync_media=False)
        return {
            "required": SyncCollectionResponse.ChangesRequired.Name(out.required),
            "server_media_usn": out.server_media_usn,
            "host_number": out.host_number,
            "server_message": out.server_message,
            "new_endpoint": out.new_endpoint,
        }

    return with_collection(args.path, run)


def full_sync(args: argparse.Namespace, upload: bool) -> Any:
    if upload and not os.path.exists(args.path):
        raise Failure(f"{args.path} does not exist")

    def run(col: Collection) -> Any:
        auth = col.sync_login(args.user, args.password, endpoint_of(args.endpoint))
        started = time.monotonic()
        # As the desktop app does: the backend closes and reopens the
        # collection itself; Python must drop its handle first and reload after.
        col.close_for_full_sync()
        try:
            # server_usn=None skips the media sync that would otherwise follow.
            col.full_upload_or_download(auth=auth, server_usn=None, upload=upload)
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


def rows_as_dicts(col: Collection, sql: str) -> list[dict[str, Any]]:
    # DBProxy only returns values; ask sqlite for the column names separately.
    names = [name for name in col.db.list(f"select name from pragma_table_info('{sql}')")]
    order = TABLE_ORDER[sql]
    rows = col.db.all(f"select {', '.join(names)} from {sql} order by {order}")
    return [dict(zip(names, map(plain, row))) for row in rows]


def sorted_by_id(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: item["id"])


def cmd_dump(args: argparse.Namespace) -> Any:
    if not os.path.exists(args.path):
        raise Failure(f"{args.path} does not exist")

    def run(col: Collection) -> Any:
        db = col.db
        col_row = db.first("select id, crt, mod, scm, ver, dty, usn, ls from col")
        col_info = dict(zip(("id", "crt", "mod", "scm", "ver", "dty", "usn", "ls"), col_row))
        for key in COL_EXCLUDED:
            del col_info[key]
        notes = [
            dict(zip(("id", "guid", "mid", "mod", "usn", "tags", "flds", "sfld", "csum", "flags", "data"), row))
            for row in db.all(
                "select id, guid, mid, mod, usn, tags, flds, sfld, csum, flags, data from notes order by id"
            )
        ]
        card_cols = (
            "id", "nid", "did", "ord", "mod", "usn", "type", "queue", "due", "ivl", "factor",
            "reps", "lapses", "left", "odue", "odid", "flags", "data",
        )
        cards = [
            dict(zip(card_cols, row))
            for row in db.all(f"select {', '.join(card_cols)} from cards order by id")
        ]
        revlog_cols = ("id", "cid", "usn", "ease", "ivl", "lastIvl", "factor", "time", "type")
        revlog = [
            dict(zip(revlog_cols, row))
            for row in db.all(f"select {', '.join(revlog_cols)} from revlog order by id")
        ]
        return {
            "col": col_info,
            "notes": notes,
            "cards": cards,
            "revlog": revlog,
            "decks": sorted_by_id(col.decks.all()),
            "deck_configs": sorted_by_id(col.decks.all_config()),
            "notetypes": sorted_by_id(col.models.all()),
            "config": col.all_config(),
            "tags": sorted(col.tags.all()),
            "tables": {name: rows_as_dicts(col, name) for name in TABLE_ORDER},
        }

    return with_collection(args.path, run)


def table_counts(col: Collection) -> dict[str, int]:
    return {
        name: col.db.scalar(f"select count() from {name}")
        for name in ("notes", "cards", "revlog", "decks", "deck_config", "notetypes", "graves")
    }


def cmd_count(args: argparse.Namespace) -> Any:
    if not os.path.exists(args.path):
        raise Failure(f"{args.path} does not exist")
    return with_collection(args.path, table_counts)


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

    for name, fn in (("make", cmd_make), ("add-notes", cmd_add_notes)):
        p = command(name, fn)
        p.add_argument("--notes", type=int, required=True)
        p.add_argument("--seed", type=int, default=1)
    command("login", cmd_login, path=False, server=True)
    command("sync", cmd_sync, server=True)
    command("full-upload", cmd_full_upload, server=True)
    command("full-download", cmd_full_download, server=True)
    command("dump", cmd_dump)
    command("count", cmd_count)
    return top


def fail(info: dict[str, Any]) -> int:
    print(json.dumps(info, ensure_ascii=False), file=sys.stderr)
    return 1


def main() -> int:
    args = parser().parse_args()
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
