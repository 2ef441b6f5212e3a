# A schema change: adds a field to the Basic notetype.
mm = col.models
basic = mm.by_name("Basic")
mm.add_field(basic, mm.new_field("Added field"))
mm.update_dict(basic)
result = [f["name"] for f in mm.by_name("Basic")["flds"]]
