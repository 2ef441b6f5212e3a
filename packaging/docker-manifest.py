#!/usr/bin/env python3
"""Makes the multi-arch OCI archive readable by `docker load` on older Docker
engines too (Synology's Container Manager among them), which read a
`manifest.json` instead of the OCI `index.json`. The archive stays a valid
OCI layout (podman, and Docker with the containerd store, read index.json
and pick the image for the machine's CPU); the added manifest.json lists
each platform's image under its own tag, anki-sync-lite:VERSION-amd64,
-arm64, -armv7 and -armv6, pointing at the same blobs (no copy).

Usage: docker-manifest.py ARCHIVE NAME:VERSION   (scripts/dist runs it)
"""

from __future__ import annotations

import io
import json
import sys
import tarfile


def main() -> int:
    archive, ref = sys.argv[1], sys.argv[2]
    with tarfile.open(archive) as tar:
        # Member names with or without a leading "./".
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}

        def read(name: str) -> dict:
            return json.load(tar.extractfile(members[name]))

        def blob(digest: str) -> dict:
            return read(path(digest))

        def path(digest: str) -> str:
            algo, hexdigest = digest.split(":", 1)
            return f"blobs/{algo}/{hexdigest}"

        index = read("index.json")
        names = [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in index["manifests"]]
        if len(index["manifests"]) != 1 or names != [ref]:
            sys.exit(f"{archive}: expected one image list named {ref}, found {names}")
        listing = blob(index["manifests"][0]["digest"])
        entries = []
        for item in listing["manifests"]:
            platform = item["platform"]
            arch = platform["architecture"] + platform.get("variant", "")
            manifest = blob(item["digest"])
            entries.append({
                "Config": path(manifest["config"]["digest"]),
                "RepoTags": [f"{ref}-{arch}"],
                "Layers": [path(layer["digest"]) for layer in manifest["layers"]],
            })
        mtime = members["index.json"].mtime
    data = json.dumps(entries, indent=1).encode()
    info = tarfile.TarInfo("manifest.json")
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644
    with tarfile.open(archive, "a", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    print(f"  manifest.json for docker load: {', '.join(e['RepoTags'][0] for e in entries)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
