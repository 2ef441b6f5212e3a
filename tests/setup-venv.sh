#!/usr/bin/env bash
# Creates the Python virtualenvs holding the real Anki clients that the
# integration tests drive (tests/client/anki_client.py). Idempotent: a venv is
# only (re)built when its marker file is missing or names other pip specs, so a
# second run is a fast no-op. Safe to run concurrently (several test binaries
# start at once): the work happens under an exclusive flock.
#
# Usage: tests/setup-venv.sh [NAME|all]   (default NAME: anki26)
# Prints the absolute path of NAME's python on stdout (nothing for "all");
# messages go to stderr.
# Venvs live in ${CARGO_TARGET_DIR:-<repo>/target}/venv/<NAME>.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-target}"
case "$target" in
    /*) ;;
    *) target="$repo/$target" ;;
esac
venv_root="$target/venv"
python=python3

die() {
    echo "setup-venv: error: $*" >&2
    exit 1
}

# debian_packages PKG...: installs the Debian packages that are missing (the
# power-cut simulator builds pyfuse3 against libfuse3 and mounts with FUSE).
debian_packages() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    echo "setup-venv: installing ${missing[*]}" >&2
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    # Another process may hold the dpkg lock for a while.
    apt-get -o DPkg::Lock::Timeout=900 update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
}

# make_venv NAME PIP_SPECS...: build venv NAME with PIP_SPECS unless its marker
# already records exactly these specs. $check names the module that must
# import afterwards (default: the anki library).
make_venv() {
    local name="$1"
    shift
    local python="$python"
    # An old library needs an old Python: `py=3.8` as the first spec picks
    # pyenv's (the machines have 3.8 and 3.9) or python3.8 on the PATH.
    if [[ "${1:-}" == py=* ]]; then
        local version="${1#py=}"
        shift
        python="$(PYENV_VERSION="$version" pyenv which python 2>/dev/null || command -v "python$version")" ||
            die "no Python $version for $name (pyenv or python$version)"
    fi
    local dir="$venv_root/$name"
    local marker="$dir/.anki-sync-lite-ready"
    local want="$*"
    if [[ -f "$marker" && "$(cat "$marker")" == "$want" && -x "$dir/bin/python" ]]; then
        return 0
    fi
    echo "setup-venv: creating $dir with: $want" >&2
    rm -rf "$dir"
    "$python" -m venv "$dir" >&2 || die "'$python -m venv $dir' failed (is python3-venv installed?)"
    "$dir/bin/python" -m pip install --quiet "$@" >&2 ||
        die "pip install $want into $dir failed (network or PyPI unavailable?)"
    "$dir/bin/python" -c "import ${check:-anki.collection}" >&2 ||
        die "${check:-anki.collection} in $dir does not import"
    printf '%s' "$want" >"$marker"
    echo "setup-venv: $name ready" >&2
}

# venv NAME PIP_SPECS...: register a venv; only the requested one is built.
venv() {
    registered+=("$1")
    if [[ "$1" == "$wanted" || "$wanted" == all ]]; then
        make_venv "$@"
    fi
}

# One registered venv per line; add e.g. the legacy client here.
setup_all() {
    venv anki26 'anki==26.9.3'
    venv anki2156 'anki==2.1.56' 'protobuf>=4.21,<5'
    # Libraries whose collections stay at schemas 14 to 17 (tests/it/old_schemas.rs).
    venv anki2126 py=3.8 'anki==2.1.26' 'ankirspy==2.1.26' 'protobuf<3.21'
    venv anki2128 py=3.8 'anki==2.1.28' 'ankirspy==2.1.28' 'protobuf<3.21'
    venv anki2138 py=3.9 'anki==2.1.38' 'protobuf<3.21'
    venv anki2141 py=3.9 'anki==2.1.41' 'protobuf<3.21'
    # The power-cut simulator (tests/powercut/powercutfs.py).
    if [[ "$wanted" == powercut || "$wanted" == all ]]; then
        debian_packages fuse3 libfuse3-dev pkg-config
    fi
    check=pyfuse3 venv powercut 'pyfuse3==3.5.0' 'trio==0.35.0'
}

wanted="${1:-anki26}"
registered=()
mkdir -p "$venv_root" || die "cannot create $venv_root"
command -v "$python" >/dev/null || die "$python not found"
{
    flock -x 9 || die "cannot lock $venv_root/.lock"
    setup_all
} 9>"$venv_root/.lock"

[[ "$wanted" == all ]] && exit 0
[[ " ${registered[*]} " == *" $wanted "* ]] || die "unknown venv '$wanted' (known: ${registered[*]})"
echo "$venv_root/$wanted/bin/python"
