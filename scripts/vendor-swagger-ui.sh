#!/usr/bin/env bash
# Vendors Swagger UI into assets/docs/vendor/, where src/http/openapi/docs.rs
# embeds it in the binary (GET /docs serves it: no CDN, nothing fetched at
# run time). Takes npm's swagger-ui-dist at the pinned version, and of it
# only what the page loads and its licence.
#
# Usage: scripts/vendor-swagger-ui.sh [VERSION]   (default: the pinned one)
# Then rebuild, check /docs (`make run`, and `cargo test --test admin_e2e`)
# and commit assets/docs/vendor/.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${1:-5.36.0}
FILES=(swagger-ui-bundle.js swagger-ui.css LICENSE)
DEST=assets/docs/vendor

command -v npm >/dev/null || {
  echo "vendor-swagger-ui: npm is missing: apt-get install -y npm" >&2
  exit 1
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# npm checks the tarball against the registry's integrity hash.
tarball=$(cd "$work" && npm pack --silent "swagger-ui-dist@$VERSION")
tar -xzf "$work/$tarball" -C "$work"
mkdir -p "$DEST"
for file in "${FILES[@]}"; do
  cp "$work/package/$file" "$DEST/$file"
done
printf '%s\n' "$VERSION" >"$DEST/VERSION"
echo "vendor-swagger-ui: swagger-ui-dist $VERSION in $DEST: ${FILES[*]}"
