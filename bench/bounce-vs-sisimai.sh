#!/usr/bin/env bash
# Bounce parsing throughput: backstop's parser (crates/proto/benches/bounce.rs, through
# `cargo bench`) and sisimai (bench/bounce-vs-sisimai.pl, Debian's libsisimai-perl) on the same
# files, one after the other in one run; prints both rates in messages/s and their ratio.
# See bench/README.md.
#
# Usage: bench/bounce-vs-sisimai.sh [DIR]
#   DIR (or $BOUNCE_DIR): directory of *.eml messages; default the sisimai corpus's maildir/bsd
#   (crates/proto/tests/data/sisimai/maildir/bsd). Works from any current directory.
# Environment: ROUNDS (exactly this many timed rounds on each side), MIN_SECS (otherwise each
#   side runs rounds until at least MIN_SECS seconds, default 2, and at least 3),
#   SISIMAI_API (message, the default, or make: see bounce-vs-sisimai.pl).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

dir=${1:-${BOUNCE_DIR:-$root/crates/proto/tests/data/sisimai/maildir/bsd}}
[ -d "$dir" ] || { echo "bounce-vs-sisimai: no directory $dir" >&2; exit 1; }
# Absolute: cargo runs the bench in the crate's directory.
BOUNCE_DIR=$(cd "$dir" && pwd)
export BOUNCE_DIR

if ! perl -MSisimai -e1 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "bounce-vs-sisimai: sisimai missing; installing libsisimai-perl" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y libsisimai-perl >&2
    else
        echo "bounce-vs-sisimai: sisimai missing: apt-get install libsisimai-perl (as root)" >&2
        exit 1
    fi
fi

echo "machine: $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "rustc: $(rustc --version); sisimai: $(perl -MSisimai -e 'print Sisimai->version')"
echo "files: $BOUNCE_DIR ($(find "$BOUNCE_DIR" -maxdepth 1 -type f -name '*.eml' | wc -l) *.eml)"

out=$(mktemp -d "${TMPDIR:-/tmp}/bounce-vs-sisimai.XXXXXX")
trap 'rm -rf "$out"' EXIT

cd "$root"
# Build first, so that the compiler is done before anything is timed.
cargo bench -p backstop-proto --bench bounce --no-run
cargo bench -p backstop-proto --bench bounce | tee "$out/backstop"
perl "$here/bounce-vs-sisimai.pl" "$BOUNCE_DIR" | tee "$out/sisimai"

field() { # field SIDE NAME [FILE]: NAME=value from SIDE's machine-readable line (in FILE)
    awk -v side="$1" -v name="$2" '$1 == side && $2 ~ /^files=/ {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == name) print kv[2] } }' \
        "$out/${3:-$1}"
}
b_rate=$(field backstop rate)
s_rate=$(field sisimai rate)
b_files=$(field backstop files)
s_files=$(field sisimai files)
if [ -z "$b_rate" ] || [ -z "$s_rate" ]; then
    echo "bounce-vs-sisimai: a side printed no rate" >&2
    exit 1
fi
if [ "$b_files" != "$s_files" ]; then
    echo "bounce-vs-sisimai: the sides read different file counts ($b_files, $s_files)" >&2
    exit 1
fi

echo
echo "files: $b_files (same set on both sides)"
printf 'backstop: %.0f messages/s\n' "$b_rate"
printf 'sisimai:  %.0f messages/s\n' "$s_rate"
awk -v b="$b_rate" -v s="$s_rate" 'BEGIN {
    printf "ratio backstop/sisimai = %.2f (target: at least 10)\n", b / s }'
m_rate=$(field mail-parser rate backstop)
if [ -n "$m_rate" ]; then
    printf 'mail-parser alone: %.0f messages/s (MIME parsing only, rounds taken in turn with\n' "$m_rate"
    awk -v m="$m_rate" -v s="$s_rate" 'BEGIN {
        printf "  backstop'"'"'s: the floor under any parser built on it; %.1f times sisimai)\n", m / s }'
    awk -v b="$b_rate" -v m="$m_rate" 'BEGIN {
        printf "backstop / mail-parser alone = %.0f%% (target: at least 50%%)\n", 100 * b / m }'
fi
