#!/usr/bin/env bash
# Checks both unit files with `systemd-analyze verify`, on a build machine
# where nothing is installed under /usr/local/bin and systemd need not run.
#
#   systemd/verify.sh [BIN_DIR]
#
# BIN_DIR holds the built edgeqi-agent and edgeqi-aggregator (default:
# target/debug under the repository root; a relative BIN_DIR is taken from the
# current directory). Each unit is copied to a temporary directory with its
# ExecStart= pointed at BIN_DIR, because `verify` fails when the executable
# does not exist. Exits non-zero if systemd-analyze fails OR prints anything:
# it reports unknown keys and bad values as warnings with exit status 0.
#
# Works offline and in containers without systemd as PID 1 (verify loads the
# units into an in-process manager; it needs no running systemd and no bus).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bin_dir="${1:-$repo/target/debug}"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify.sh: systemd-analyze not found (Debian/Ubuntu: apt-get install systemd)" >&2
    exit 2
fi
if [[ ! -d "$bin_dir" ]]; then
    echo "verify.sh: binary directory $bin_dir does not exist (build first, or pass BIN_DIR)" >&2
    exit 2
fi
bin_dir="$(cd "$bin_dir" && pwd)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/edgeqi-verify.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

status=0
for name in edgeqi-agent edgeqi-aggregator; do
    unit="$here/$name.service"
    bin="$bin_dir/$name"
    if [[ ! -x "$bin" ]]; then
        echo "verify.sh: $bin is missing or not executable" >&2
        status=1
        continue
    fi
    if ! grep -q "^ExecStart=/usr/local/bin/$name " "$unit"; then
        echo "verify.sh: $unit has no 'ExecStart=/usr/local/bin/$name ...' line to rewrite" >&2
        status=1
        continue
    fi
    # The copy keeps the unit's file name: systemd derives the unit name from it.
    sed "s#^ExecStart=/usr/local/bin/$name #ExecStart=$bin #" "$unit" >"$tmp/$name.service"

    # --man=no: do not look up man pages (none are installed on build boxes).
    # --generators=no: do not run the host's unit generators (fstab, ...).
    # SYSTEMD_LOG_COLOR=0 keeps escape codes out of the captured output.
    # Messages name the temporary copy; map them back to the real file.
    if out="$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no --generators=no \
        "$tmp/$name.service" 2>&1)"; then
        rc=0
    else
        rc=$?
    fi
    out="${out//$tmp\//$here/}"
    if [[ $rc -ne 0 || -n "$out" ]]; then
        echo "FAIL $name.service (systemd-analyze exit status $rc):"
        printf '%s\n' "$out" | sed 's/^/    /'
        status=1
    else
        echo "ok   $name.service"
    fi
done
exit "$status"
