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
    media-add --path P --src DIR         add DIR's files through the media manager
    media-remove --path P --name N ...   trash media files
    media-sync --path P --endpoint .. --user .. --password .. [--with-collection]
    media-list --path P                  {name: sha1} of the media folder
    import-colpkg --path P --package F   replace P with a collection package, as File > Import does
    schema11-dump --path P               library schema-11 JSON + raw rows of notetypes/decks/presets
    batch                                one command a line on stdin (a JSON list of the
                                         arguments above); each answer one line on stdout:
                                         `@@ {"ok": RESULT}` or `@@ {"error": ...}`. Saves the
                                         library's start-up on every call (the power-cut trials)
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

from anki._backend import RustBackend
from anki.collection import AddNoteRequest, Collection
from anki.errors import SyncError
from anki.media import media_paths_from_col_path
from anki.scheduler_pb2 import CardAnswer
from anki.sync_pb2 import SyncCollectionResponse
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


# Batch mode keeps each account's host key, as the desktop app keeps its
# login: one hostKey request per account and password, not one per sync.
# None outside batch mode, where every command logs in.
HOST_KEYS: dict[tuple[str, str, str], Any] | None = None


def login(col: Collection, args: argparse.Namespace) -> Any:
    endpoint = endpoint_of(args.endpoint)
    account = (endpoint, args.user, args.password)
    if HOST_KEYS is not None and account in HOST_KEYS:
        return HOST_KEYS[account]
    auth = col.sync_login(args.user, args.password, endpoint)
    if HOST_KEYS is not None:
        HOST_KEYS[account] = auth
    return auth


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
        auth = login(col, args)
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
        auth = login(col, args)
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

# What `dump` leaves out, and why: driver_common.COL_EXCLUDED.


def rows_as_dicts(col: Collection, sql: str) -> list[dict[str, Any]]:
    # DBProxy only returns values; ask sqlite for the column names separately.
    names = [name for name in col.db.list(f"select name from pragma_table_info('{sql}')")]
    order = TABLE_ORDER[sql]
    rows = col.db.all(f"select {', '.join(names)} from {sql} order by {order}")
    return [dict(zip(names, map(plain, row))) for row in rows]


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
            **object_sections(col, rows_as_dicts),
        }

    return with_collection(args.path, run)


def cmd_count(args: argparse.Namespace) -> Any:
    if not os.path.exists(args.path):
        raise Failure(f"{args.path} does not exist")
    return with_collection(args.path, table_counts)


# ---------------------------------------------------------------- run


SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios")


def cmd_run(args: argparse.Namespace) -> Any:
    """Runs tests/client/scenarios/NAME.py against the collection. The script
    sees `col`, `args` (the --arg KEY=VALUE pairs) and this module's helpers,
    and may set `result` to what should be printed."""
    return with_collection(args.path, scenario(SCENARIOS, args, globals()))


# ---------------------------------------------------------------- schema11-dump


def _s11_hex(value: Any) -> str:
    # DBProxy hands blobs over as lists of byte values.
    return bytes(value).hex() if isinstance(value, list) else bytes(value or b"").hex()


def _s11_notetypes(col: Collection) -> None:
    mm = col.models
    # Odd settings on every level, set through the schema-11 dict API.
    nt = mm.new("Lite Odd")
    for name in ("Front", "Back", "Notes"):
        mm.add_field(nt, mm.new_field(name))
    f = nt["flds"]
    f[0].update(sticky=True, rtl=True, font="Liberation Serif", size=33,
                description="the prompt", plainText=True, collapsed=True,
                excludeFromSearch=True, media=[], liteFieldKey={"a": [1, 2]})
    f[2].update(preventDeletion=True, size=8, font="")
    t1 = mm.new_template("Forward")
    t1.update(qfmt="{{Front}}", afmt="{{FrontSide}}<hr id=answer>{{Back}}",
              bqfmt="<b>{{Front}}</b>", bafmt="{{Back}}", bfont="Courier", bsize=9,
              liteTemplateKey="kept")
    t2 = mm.new_template("Reverse")
    t2.update(qfmt="{{#Back}}{{Back}}{{/Back}}", afmt="{{Front}}")
    mm.add_template(nt, t1)
    mm.add_template(nt, t2)
    default_deck = col.decks.id("Default")
    nt["tmpls"][1]["did"] = default_deck
    nt.update(sortf=1, latexsvg=True, latexPre="\\documentclass{article}\n\\begin{document}",
              latexPost="\\end{document}%lite", css=".card { color: #abcdef; }\n",
              did=default_deck, vers=[], tags=["lite", "odd"], liteKey={"nested": [True, None, 1.5]},
              originalId=424242)
    nt["req"] = [[0, "any", [0]], [1, "all", [1, 2]]]
    mm.add_dict(nt)

    cloze = mm.copy(mm.by_name("Cloze"), add=False)
    cloze["name"] = "Lite Cloze Copy"
    cloze["flds"][0]["description"] = "cloze text here"
    mm.add_dict(cloze)


def _s11_decks(col: Collection) -> None:
    dm = col.decks
    today = col.sched.today
    dm.id("Lite::Nested::Deeper")
    did = dm.id("Lite::Limits")
    deck = dm.get(did)
    deck.update(desc="**described**", md=True, collapsed=False, browserCollapsed=True,
                extendNew=3, extendRev=4, reviewLimit=120, newLimit=7,
                reviewLimitToday={"limit": 50, "today": today + 41},
                newLimitToday={"limit": 2, "today": today + 41}, desiredRetention=87,
                liteDeckKey=["kept", 1])
    # Counters of an earlier day (lrn) are reset when the library stores them.
    deck["newToday"] = [today + 41, 3]
    deck["revToday"] = [today + 41, 2]
    deck["lrnToday"] = [today + 40, 7]
    deck["timeToday"] = [today + 41, 12345]
    dm.save(deck)

    fid = dm.new_filtered("Lite Filtered")
    filt = dm.get(fid)
    filt.update(resched=False, terms=[["deck:Lite*", 55, 1], ["is:due", 20, 6]],
                previewDelay=7, previewAgainSecs=11, previewHardSecs=22, previewGoodSecs=33,
                delays=[1.5, 10.0])
    dm.save(filt)


def _s11_configs(col: Collection) -> None:
    dm = col.decks
    cid = dm.add_config_returning_id("Lite FSRS")
    c = dm.get_config(cid)
    c["new"].update(delays=[0.5, 3.0, 1440.0], initialFactor=2300, ints=[2, 5, 0], order=0,
                    perDay=33, bury=True, separate=True)
    c["rev"].update(perDay=444, ease4=1.45, ivlFct=0.95, maxIvl=3650, hardFactor=1.15,
                    bury=True, fuzz=0.05, minSpace=1)
    c["lapse"].update(delays=[5.0, 20.0], leechAction=0, leechFails=6, minInt=2, mult=0.3)
    c.update(maxTaken=75, autoplay=False, timer=1, replayq=False, newMix=1,
             newPerDayMinimum=3, interdayLearningMix=2, reviewOrder=7, newSortOrder=3,
             newGatherPriority=5, buryInterdayLearning=True,
             fsrsWeights=[0.4, 0.6, 2.4, 5.8, 4.93, 0.94, 0.86, 0.01, 1.49, 0.14, 0.94, 2.18,
                          0.05, 0.34, 1.26, 0.29, 2.61],
             fsrsParams5=[0.40255, 1.18385, 3.173, 15.69105, 7.1949, 0.5345, 1.4604, 0.0046,
                          1.54575, 0.1192, 1.01925, 1.9395, 0.11, 0.29605, 2.2698, 0.2315,
                          2.9898, 0.51655, 0.6621],
             fsrsParams6=[0.212, 1.2931, 2.3065, 8.2956, 6.4133, 0.8334, 3.0194, 0.001,
                          1.8722, 0.1666, 0.796, 1.4835, 0.0614, 0.2629, 1.6483, 0.6014,
                          1.8729, 0.5425, 0.0912, 0.0658, 0.1542],
             desiredRetention=0.87, sm2Retention=0.83, weightSearch="deck:Lite*",
             ignoreRevlogsBeforeDate="2024-01-31",
             easyDaysPercentages=[1.0, 0.5, 1.0, 0.0, 1.0, 0.7, 1.0],
             stopTimerOnAnswer=True, secondsToShowQuestion=2.5, secondsToShowAnswer=1.25,
             questionAction=1, answerAction=3, waitForAudio=False,
             liteConfKey={"x": 1})
    dm.update_config(c)
    dm.set_config_id_for_deck_dict(dm.get(dm.id("Lite::Limits")), cid)

    # Out-of-range values are stored as given; the library clamps them when
    # it reads the preset (storage.md §6.7).
    cid = dm.add_config_returning_id("Lite Clamped")
    c = dm.get_config(cid)
    c["rev"]["hardFactor"] = 2.0
    c["new"]["perDay"] = 12000
    c["desiredRetention"] = 0.5
    dm.update_config(c)


def _s11_rows(col: Collection, sql: str, names: tuple[str, ...], blobs: tuple[str, ...], *args: Any):
    out = []
    for row in col.db.all(sql, *args):
        item = dict(zip(names, row))
        for key in blobs:
            item[key] = _s11_hex(item[key])
        out.append(item)
    return out


def cmd_schema11_dump(args: argparse.Namespace) -> Any:
    """Builds (if P is missing) a collection rich in notetype, deck and
    preset variety, then prints for each object the library's own schema-11
    JSON next to its raw schema-18 rows (blobs as hex)."""
    fresh = not os.path.exists(args.path)

    def run(col: Collection) -> Any:
        if fresh:
            _s11_notetypes(col)
            _s11_decks(col)
            _s11_configs(col)
        notetypes = []
        for (ntid,) in col.db.all("select id from notetypes order by id"):
            notetypes.append({
                "json": col.models.get(ntid),
                "row": _s11_rows(col, "select id, name, mtime_secs, usn, config from notetypes where id = ?",
                                 ("id", "name", "mtime_secs", "usn", "config"), ("config",), ntid)[0],
                "fields": _s11_rows(col, "select ord, name, config from fields where ntid = ? order by ord",
                                    ("ord", "name", "config"), ("config",), ntid),
                "templates": _s11_rows(
                    col, "select ord, name, mtime_secs, usn, config from templates where ntid = ? order by ord",
                    ("ord", "name", "mtime_secs", "usn", "config"), ("config",), ntid),
            })
        decks = [
            {"json": col.decks.get(row["id"]), "row": row}
            for row in _s11_rows(col, "select id, name, mtime_secs, usn, common, kind from decks order by id",
                                 ("id", "name", "mtime_secs", "usn", "common", "kind"), ("common", "kind"))
        ]
        configs = [
            {"json": col.decks.get_config(row["id"]), "row": row}
            for row in _s11_rows(col, "select id, name, mtime_secs, usn, config from deck_config order by id",
                                 ("id", "name", "mtime_secs", "usn", "config"), ("config",))
        ]
        return {"notetypes": notetypes, "decks": decks, "deck_configs": configs}

    return with_collection(args.path, run)


# ---------------------------------------------------------------- media
# Media subcommands. They go through the library's own media manager and
# media syncer, so names are normalised and files scanned exactly as the
# desktop app does.


# Longest wait for one media sync run.
MEDIA_SYNC_TIMEOUT_SECS = 900


def cmd_media_add(args: argparse.Namespace) -> Any:
    """Adds every file in --src (by name order); prints {given name: stored name}."""

    return with_collection(args.path, lambda col: media_add(col, args.src))


def cmd_media_remove(args: argparse.Namespace) -> Any:
    """Moves the named files to the media trash, as deleting them in the app does."""

    def run(col: Collection) -> Any:
        col.media.trash_files(list(args.name))
        return {"removed": sorted(args.name)}

    return with_collection(args.path, run)


def wait_for_media_sync(col: Collection) -> dict[str, str]:
    deadline = time.monotonic() + MEDIA_SYNC_TIMEOUT_SECS
    while True:
        # Raises the sync's error, if it failed.
        status = col.media_sync_status()
        if not status.active:
            p = status.progress
            return {"checked": p.checked, "added": p.added, "removed": p.removed}
        if time.monotonic() > deadline:
            col.abort_media_sync()
            raise Failure(f"media sync still running after {MEDIA_SYNC_TIMEOUT_SECS}s")
        time.sleep(0.02)


def cmd_media_sync(args: argparse.Namespace) -> Any:
    """A stand-alone media sync (calls begin), or with --with-collection a
    collection sync that starts the media sync with the server's media USN
    from /sync/meta. Prints the time taken and the final progress."""

    def run(col: Collection) -> Any:
        auth = login(col, args)
        started = time.monotonic()
        result: dict[str, Any] = {}
        if args.with_collection:
            out = col.sync_collection(auth, sync_media=True)
            result["required"] = SyncCollectionResponse.ChangesRequired.Name(out.required)
            result["server_media_usn"] = out.server_media_usn
        else:
            col.sync_media(auth)
        result["progress"] = wait_for_media_sync(col)
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    return with_collection(args.path, run)


def cmd_media_list(args: argparse.Namespace) -> Any:
    """{name: sha1} of every file in the collection's media folder."""
    return media_listing(with_collection(args.path, lambda col: col.media.dir()))


def cmd_import_colpkg(args: argparse.Namespace) -> Any:
    """Imports a collection package the way the desktop app's File > Import
    does (its backend call, with the collection closed): the collection at
    --path is replaced and the package's media join its media folder. Prints
    the table counts of the result."""
    media_folder, media_db = media_paths_from_col_path(args.path)
    RustBackend().import_collection_package(
        col_path=args.path, backup_path=args.package, media_folder=media_folder, media_db=media_db
    )
    return with_collection(args.path, table_counts)


def add_media_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("media-add", cmd_media_add)
    p.add_argument("--src", required=True, help="folder whose files are added")
    p = command("media-remove", cmd_media_remove)
    p.add_argument("--name", action="append", required=True)
    p = command("media-sync", cmd_media_sync, server=True)
    p.add_argument("--with-collection", action="store_true")
    command("media-list", cmd_media_list)
    p = command("import-colpkg", cmd_import_colpkg)
    p.add_argument("--package", required=True)


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
    p = command("run", cmd_run)
    p.add_argument("--script", required=True)
    p.add_argument("--arg", action="append", default=[], help="KEY=VALUE passed to the script")
    command("dump", cmd_dump)
    command("count", cmd_count)
    command("schema11-dump", cmd_schema11_dump)
    add_media_commands(command)
    return top


def run_command(args: argparse.Namespace) -> tuple[bool, Any]:
    """(True, result) or (False, the error object)."""
    try:
        return True, args.fn(args)
    except SyncError as err:
        return False, {"error": "SyncError", "kind": err.kind.name, "message": str(err)}
    except Failure as err:
        return False, {"error": "Failure", "message": str(err)}
    except Exception as err:  # any library error: report its type, never hide it
        return False, {"error": type(err).__name__, "message": str(err)}


# Marks answer lines in batch mode, so nothing else the library might print
# is taken for one.
BATCH_MARK = "@@ "


def batch() -> int:
    global HOST_KEYS
    HOST_KEYS = {}
    top = parser()
    for line in sys.stdin:
        if not line.strip():
            continue
        ok, value = run_command(top.parse_args(json.loads(line)))
        if not ok and value.get("kind") == "AUTH":
            HOST_KEYS.clear()  # a stale key: log in again next time
        answer = {"ok": value} if ok else {"error": value}
        sys.stdout.write(BATCH_MARK + json.dumps(answer, ensure_ascii=False, sort_keys=True) + "\n")
        sys.stdout.flush()
    return 0


def main() -> int:
    if sys.argv[1:] == ["batch"]:
        return batch()
    ok, value = run_command(parser().parse_args())
    if not ok:
        return fail(value)
    json.dump(value, sys.stdout, ensure_ascii=False, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
