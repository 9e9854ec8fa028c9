#!/usr/bin/env bash
# Fetches the perplexity text into data/ and checks its hash (docs/data.md says what it is).
# Nothing here is committed (data/ is ignored). Safe to run again.
#   data/pride_and_prejudice.txt   Jane Austen, "Pride and Prejudice" (public domain), taken from
#                                  Debian's r-cran-janeaustenr 1.0.0-1 (only downloaded, not
#                                  installed: it would pull in R), paragraphs reflowed to one line
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data
OUT=data/pride_and_prejudice.txt
DEB_VER=1.0.0-1
DEB_SHA=df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95
TXT_SHA=0770f4bae5c1392b0ce05d4b053df85e0837e30c1ec35c03661bafe2b7be7fee

if [ -f "$OUT" ] && echo "$TXT_SHA  $OUT" | sha256sum --check --status; then
  echo "data: $OUT present (sha256 ok)"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt's download user must be able to write here
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

echo "data: fetching r-cran-janeaustenr=$DEB_VER (Debian)"
if ! (cd "$tmp" && apt-get download -qq "r-cran-janeaustenr=$DEB_VER" >/dev/null 2>&1); then
  # A fresh machine may have no package lists yet.
  $SUDO apt-get update -qq
  (cd "$tmp" && apt-get download -qq "r-cran-janeaustenr=$DEB_VER") \
    || { echo "data: could not download r-cran-janeaustenr=$DEB_VER" >&2; exit 1; }
fi
deb="$tmp/r-cran-janeaustenr_${DEB_VER}_all.deb"
[ -f "$deb" ] || { echo "data: apt-get download gave no $deb" >&2; exit 1; }
echo "$DEB_SHA  $deb" | sha256sum --check --quiet || { echo "data: hash mismatch for $deb" >&2; exit 1; }

dpkg-deb -x "$deb" "$tmp/x"
python3 scripts/rdata_text.py "$tmp/x/usr/lib/R/site-library/janeaustenr/data" prideprejudice \
  --reflow > "$OUT.tmp"
echo "$TXT_SHA  $OUT.tmp" | sha256sum --check --quiet || { echo "data: hash mismatch for $OUT" >&2; exit 1; }
mv "$OUT.tmp" "$OUT"
echo "data: wrote $OUT ($(wc -w < "$OUT") words)"
