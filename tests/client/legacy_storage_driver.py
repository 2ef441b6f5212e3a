#!/usr/bin/env python3
"""Real-client oracle for whole-collection schema conversion (GitHub issue 5).

Runs under both the current library (anki 26.9.3) and the legacy one
(anki 2.1.56), so it only uses APIs both have. tests/it/legacy_storage.rs
drives it; each subcommand prints one JSON value on stdout and exits 0, or
prints {"error": ..., "message": ...} on the last stderr line and exits 1.

Subcommands:
    enrich --path P       add odd presets, decks, notetype settings and tags
                          (including keys 2.1.56 does not know) to P
    make-legacy --path P  build a collection in 2.1.56 and close it at schema 11
    downgrade --path P    open P and close it with the library's own downgrade to 11
    dump --path P         the file's header facts, then everything the library
                          shows of P (opening may upgrade P in place)
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from typing import Any

from anki.collection import Collection

FSRS_PARAMS = [0.212, 1.2931, 2.3065, 8.2956, 6.4133, 0.8334, 3.0194, 0.001, 1.8722, 0.1666,
               0.796, 1.4835, 0.0614, 0.2629, 1.6483, 0.6014, 1.8729, 0.5425, 0.0912, 0.0658,
               0.1542]


class Failure(Exception):
    pass


# ---------------------------------------------------------------- building


def add_rich_preset(col: Collection, name: str) -> int:
    """A preset with FSRS-era keys (unknown to 2.1.56), sub-object extras and
    a key no client knows."""
    dm = col.decks
    cid = dm.add_config_returning_id(name)
    c = dm.get_config(cid)
    c["new"].update(delays=[0.5, 3.0, 1440.0], initialFactor=2300, ints=[2, 5, 0], order=0,
                    perDay=33, bury=True, separate=True)
    c["rev"].update(perDay=444, ease4=1.45, ivlFct=0.95, maxIvl=3650, hardFactor=1.15,
                    bury=True, fuzz=0.05)
    c["lapse"].update(delays=[5.0, 20.0], leechAction=0, leechFails=6, minInt=2, mult=0.3)
    c.update(maxTaken=75, autoplay=False, timer=1, replayq=False,
             fsrsParams6=FSRS_PARAMS, desiredRetention=0.87, sm2Retention=0.83,
             easyDaysPercentages=[1.0, 0.5, 1.0, 0.0, 1.0, 0.7, 1.0],
             weightSearch="deck:Lite*", waitForAudio=False, liteConfKey={"x": [1, "y"]})
    dm.update_config(c)
    return cid


def add_rich_decks(col: Collection, preset_id: int) -> None:
    dm = col.decks
    did = dm.id("Lite::Nested::Deeper")
    deck = dm.get(did)
    deck.update(desc="**described**", collapsed=False, extendNew=3, extendRev=4,
                liteDeckKey=["kept", 1])
    dm.save(deck)
    dm.set_config_id_for_deck_dict(dm.get(did), preset_id)
    fid = dm.new_filtered("Lite Filtered")
    filt = dm.get(fid)
    filt.update(resched=False, terms=[["deck:Lite*", 55, 1], ["is:due", 20, 6]],
                previewDelay=7, delays=[1.5, 10.0])
    dm.save(filt)


def add_rich_notetype(col: Collection) -> dict[str, Any]:
    mm = col.models
    nt = mm.new("Lite Odd Ünïcode")
    for name in ("Front", "Back", "Notes"):
        mm.add_field(nt, mm.new_field(name))
    nt["flds"][0].update(sticky=True, rtl=True, font="Liberation Serif", size=33,
                         description="the prompt", liteFieldKey={"a": [1, 2]})
    fwd = mm.new_template("Forward")
    fwd.update(qfmt="{{Front}}", afmt="{{FrontSide}}<hr id=answer>{{Back}}",
               bqfmt="<b>{{Front}}</b>", bfont="Courier", bsize=9, liteTemplateKey="kept")
    mm.add_template(nt, fwd)
    nt.update(sortf=1, latexsvg=True, css=".card { color: #abcdef; }\n",
              liteKey={"nested": [True, None, 1.5]})
    mm.add_dict(nt)
    return mm.by_name("Lite Odd Ünïcode")


def add_notes(col: Collection, nt: dict[str, Any], deck_names: list[str], count: int) -> None:
    for i in range(count):
        note = col.new_note(nt)
        note["Front"] = f"front {i} é 中文"
        note["Back"] = f"back <b>{i}</b>"
        note.tags = ["lite::nested", f"t{i % 3}", "unicode_ü"]
        col.add_note(note, col.decks.id(deck_names[i % len(deck_names)]))


def cmd_enrich(args: argparse.Namespace) -> Any:
    col = Collection(args.path)
    try:
        preset = add_rich_preset(col, "Lite FSRS")
        add_rich_decks(col, preset)
        nt = add_rich_notetype(col)
        add_notes(col, nt, ["Lite::Nested::Deeper", "Default"], 12)
        col.set_config("liteConfigKey", {"nested": [1, 2.5, None]})
    finally:
        col.close()
    return {"ok": True}


def review_some(col: Collection, count: int) -> int:
    """Answers cards through 2.1.56's scheduler API (no v3 queue)."""
    done = 0
    col.reset()
    for _ in range(count):
        card = col.sched.getCard()
        if card is None:
            break
        card.start_timer()
        col.sched.answerCard(card, 3)
        done += 1
    return done


def cmd_make_legacy(args: argparse.Namespace) -> Any:
    if os.path.exists(args.path):
        raise Failure(f"{args.path} already exists")
    col = Collection(args.path)
    try:
        preset = add_rich_preset(col, "Lite FSRS")
        add_rich_decks(col, preset)
        nt = add_rich_notetype(col)
        add_notes(col, nt, ["Lite::Nested::Deeper", "Default", "Languages::Español"], 30)
        basic = col.models.by_name("Basic")
        for i in range(10):
            note = col.new_note(basic)
            note["Front"] = f"basic {i}"
            note["Back"] = f"answer {i}"
            col.add_note(note, 1)
        col.decks.select(1)
        reviewed = review_some(col, 8)
        cids = col.db.list("select id from cards order by id limit 3")
        col.sched.suspend_cards(cids[:1])
        col.set_user_flag_for_cards(2, cids[1:3])
        col.remove_notes(col.db.list("select id from notes order by id limit 1"))
        col.set_config("liteConfigKey", {"nested": [1, 2.5, None]})
    finally:
        col.close(downgrade=True)
    return {"reviewed": reviewed, **header_facts(args.path)}


def cmd_downgrade(args: argparse.Namespace) -> Any:
    col = Collection(args.path)
    col.close(downgrade=True)
    return header_facts(args.path)


# ---------------------------------------------------------------- dump


def header_facts(path: str) -> dict[str, Any]:
    """Schema version and journal header bytes, read before any library
    open (which would upgrade the file)."""
    with open(path, "rb") as f:
        header = f.read(20)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        ver = conn.execute("select ver from col").fetchone()[0]
    finally:
        conn.close()
    return {"ver": ver, "journal_bytes": [header[18], header[19]]}


def by_id(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: item["id"])


def rows(col: Collection, sql: str) -> list[list[Any]]:
    return [list(row) for row in col.db.all(sql)]


def cmd_dump(args: argparse.Namespace) -> Any:
    facts = header_facts(args.path)
    col = Collection(args.path)
    try:
        db = col.db
        return {
            "file": facts,
            "integrity": db.scalar("pragma integrity_check"),
            "ver_after_open": db.scalar("select ver from col"),
            "col": db.first("select crt, scm, usn, ls from col"),
            "notes": rows(col, "select id, guid, mid, mod, usn, tags, flds, sfld, csum, flags, data"
                               " from notes order by id"),
            "cards": rows(col, "select * from cards order by id"),
            "revlog": rows(col, "select * from revlog order by id"),
            "graves": rows(col, "select oid, type, usn from graves order by oid, type"),
            "decks": by_id(col.decks.all()),
            "deck_configs": by_id(col.decks.all_config()),
            "notetypes": by_id(col.models.all()),
            "config": dict(sorted(col.all_config().items())),
            "tags": sorted(col.tags.all()),
            # Row metadata the JSON views do not show (blobs left out: the
            # `other` JSON inside them has arbitrary key order upstream).
            "rows": {
                "deck_config": rows(col, "select id, name, mtime_secs, usn from deck_config order by id"),
                "decks": rows(col, "select id, name, mtime_secs, usn from decks order by id"),
                "notetypes": rows(col, "select id, name, mtime_secs, usn from notetypes order by id"),
                "fields": rows(col, "select ntid, ord, name from fields order by ntid, ord"),
                "templates": rows(col, "select ntid, ord, name, mtime_secs, usn from templates"
                                       " order by ntid, ord"),
                "config": rows(col, "select key, usn, mtime_secs from config order by key"),
                "tags": rows(col, "select tag, usn, collapsed from tags order by tag"),
            },
        }
    finally:
        col.close()


# ---------------------------------------------------------------- main


def main() -> int:
    top = argparse.ArgumentParser()
    sub = top.add_subparsers(dest="command", required=True)
    commands = {
        "enrich": cmd_enrich,
        "make-legacy": cmd_make_legacy,
        "downgrade": cmd_downgrade,
        "dump": cmd_dump,
    }
    for name in commands:
        sub.add_parser(name).add_argument("--path", required=True)
    args = top.parse_args()
    try:
        result = commands[args.command](args)
    except Exception as e:  # noqa: BLE001 - reported to the test as JSON
        print(json.dumps({"error": type(e).__name__, "message": str(e)}), file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
