#!/usr/bin/env bash
# Builds Mailpit, the SMTP server the tests and docker-compose use, from its
# Go module, once per version, and prints the binary's path.
set -euo pipefail
version=v1.27.11
cache=${MAILPIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/eventrouter}
bin="$cache/mailpit-$version/mailpit"
if [[ ! -x $bin ]]; then
  echo "mailpit.sh: building mailpit $version (about 30 s, once)" >&2
  GOBIN="$(dirname "$bin")" GOFLAGS=-buildvcs=false go install "github.com/axllent/mailpit@$version" >&2
fi
echo "$bin"
