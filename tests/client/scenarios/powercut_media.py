# The power-cut trials' media changes (tests/it/powercut/): adds `add` new
# files of random content (names start with `prefix`) and moves `remove`
# existing files to the media trash, chosen with `seed`, as the app does.
# Prints {"added": {name: sha1}, "removed": [names]}.
import hashlib
import os
import random

rng = random.Random(int(args["seed"]))
present = sorted(n for n in os.listdir(col.media.dir()) if os.path.isfile(os.path.join(col.media.dir(), n)))
removed = rng.sample(present, min(int(args.get("remove", "0")), len(present)))
if removed:
    col.media.trash_files(removed)
added = {}
for i in range(int(args.get("add", "0"))):
    data = rng.randbytes(rng.randint(1, 48 * 1024))
    name = col.media.write_data(f"{args['prefix']}-{i}.bin", data)
    added[name] = hashlib.sha1(data).hexdigest()
result = {"added": added, "removed": sorted(removed)}
