#!/usr/bin/env bash
# Vendors uPlot into assets/admin/vendor/, where src/http/admin.rs embeds it
# in the binary (the admin page's Overview charts: no CDN, nothing fetched at
# run time). Takes npm's uplot at the pinned version, and of it only what the
# page loads (the IIFE build and its stylesheet) and its licence.
#
# Usage: scripts/vendor-uplot.sh [VERSION]   (default: the pinned one)
# Then rebuild, check /admin (`make run`, and `cargo test --test admin_e2e`)
# and commit assets/admin/vendor/.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${1:-1.6.32}
FILES=(dist/uPlot.iife.min.js dist/uPlot.min.css LICENSE)
DEST=assets/admin/vendor

command -v npm >/dev/null || {
  echo "vendor-uplot: npm is missing: apt-get install -y npm" >&2
  exit 1
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# npm checks the tarball against the registry's integrity hash.
tarball=$(cd "$work" && npm pack --silent "uplot@$VERSION")
tar -xzf "$work/$tarball" -C "$work"
mkdir -p "$DEST"
for file in "${FILES[@]}"; do
  cp "$work/package/$file" "$DEST/$(basename "$file")"
done
printf '%s\n' "$VERSION" >"$DEST/VERSION"
echo "vendor-uplot: uplot $VERSION in $DEST: ${FILES[*]}"
