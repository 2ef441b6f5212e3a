# Buries one card of each type the collection has (new, learning, review;
# alternating user- and scheduler-burial) and records the last unbury as
# yesterday, as if the cards had been buried the day before. Prints today's
# day number and the buried cards' ids. Reading `today` here is the last time
# the scheduler runs: it unburies on its own once the day has rolled over.
# The collection is dated ten days back first: a collection made today is
# on day 0, and no day before it can be "yesterday".
col.db.execute("update col set crt = crt - 10 * 86400")
today = col.sched.today
ids = []
for ctype in (0, 1, 2):
    cid = col.db.scalar("select id from cards where type = ? and queue >= 0 order by id limit 1", ctype)
    if cid:
        ids.append(cid)
for i, cid in enumerate(ids):
    col.sched.bury_cards([cid], manual=(i % 2 == 0))
col.set_config("lastUnburied", today - 1)
result = {"today": today, "ids": ids}
