# What some add-ons do: keep their own full-text index and R*Tree inside the
# collection. With `--arg write=1` creates them with one row each; always
# prints their rows (the library's SQLite has both modules built in).
if args.get("write") == "1":
    col.db.execute("create virtual table addon_fts using fts5(body)")
    col.db.execute("insert into addon_fts values ('hello from an add-on')")
    col.db.execute("create virtual table addon_rtree using rtree(id, x0, x1)")
    col.db.execute("insert into addon_rtree values (7, 1.5, 2.5)")
result = {
    "fts": col.db.all("select body from addon_fts where addon_fts match 'hello'"),
    "rtree": col.db.all("select id, x0, x1 from addon_rtree"),
}
