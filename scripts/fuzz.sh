#!/usr/bin/env bash
# Runs every fuzz target (func FuzzXxx(f *testing.F)) in the module for a
# bounded time each, one target per go test run, as go requires. Fails if
# any target fails, or if none is found (that is a broken search, not a
# clean run). What a failing target found is kept under the package's
# testdata/fuzz/FuzzXxx/: fix the code and commit that file, so that plain
# go test replays it from then on.
#
# FUZZTIME sets the time per target (default 20s). Arguments are the
# packages to search (default ./...), e.g. scripts/fuzz.sh ./events/.
set -euo pipefail
cd "$(dirname "$0")/.."

fuzztime=${FUZZTIME:-20s}
(($# > 0)) || set -- ./...

# Only packages whose test files mention a fuzz target are compiled to be
# listed; go test -list then names the targets exactly as go sees them
# (build tags and all).
# Each go command runs on its own, not in a pipe or <(...), so that a
# package that does not build stops the script instead of hiding its
# targets.
pkgs=$(go list -f '{{.ImportPath}} {{.Dir}}' "$@")
targets=()
while read -r pkg dir; do
  grep -qs '^func Fuzz' "$dir"/*_test.go || continue
  list=$(go test -list '^Fuzz' "$pkg")
  while read -r name; do
    [[ $name == Fuzz* ]] && targets+=("$pkg $name")
  done <<<"$list"
done <<<"$pkgs"

if ((${#targets[@]} == 0)); then
  echo "fuzz.sh: no fuzz targets found in $*" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} target(s), $fuzztime each"

out=$(mktemp)
trap 'rm -f "$out"' EXIT
failed=()
for target in "${targets[@]}"; do
  read -r pkg name <<<"$target"
  echo "fuzz.sh: $name in $pkg"
  if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$out"; then
    continue
  fi
  # go test sometimes ends a fuzz run that reached -fuzztime with "context
  # deadline exceeded" while a worker is busy, and writes no input: nothing
  # failed. A real finding always writes its input.
  if grep -q 'context deadline exceeded' "$out" && ! grep -q 'Failing input written' "$out"; then
    echo "fuzz.sh: $name ended at its time limit with go's 'context deadline exceeded' and no failing input; counted as passed"
    continue
  fi
  failed+=("$name in $pkg")
done

if ((${#failed[@]} > 0)); then
  echo "fuzz.sh: ${#failed[@]} of ${#targets[@]} target(s) failed:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  echo "fuzz.sh: the failing inputs are in each package's testdata/fuzz/<target>/; fix the code and commit them" >&2
  exit 1
fi
echo "fuzz.sh: all ${#targets[@]} target(s) passed"
