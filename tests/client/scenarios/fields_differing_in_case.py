# Renames Basic's second field to "front", so its two fields differ only in
# case, as only a damaged collection has them: the client's own rules would
# refuse it, so the unique index is dropped and the rows are edited directly.
# The notetype is marked changed (usn -1), so the next normal sync sends it.
import time

basic = col.models.by_name("Basic")
col.db.execute("drop index if exists idx_fields_name_ntid")
col.db.execute("update fields set name = 'front' where ntid = ? and ord = 1", basic["id"])
col.db.execute(
    "update notetypes set usn = -1, mtime_secs = ? where id = ?", int(time.time()), basic["id"]
)
col.db.execute("update col set mod = ?", int(time.time() * 1000))
result = col.db.list("select name from fields where ntid = ? order by ord", basic["id"])
