#!/usr/bin/env bash
# Walks the README's first hour: runs the `sh` blocks of its sections, in order, as one bash script,
# and checks every answer the README shows against what the commands printed.
#
# Usage: tests/readme-walk.sh [SECTION...]   (default: "A walk-through with curl" "Receiving events")
#
# In a block, a comment line right after a command (or after another such line) is that command's
# shown answer: the last lines the commands since the previous answer printed must match it, `...`
# matching anything. Other comments (after a blank line, or at the end of a command line) are prose.
#
# Run from a clone it does exactly what a reader copying the blocks does, `cargo build --release`
# included, on ports 8790 and 9000. tests/it/readme.rs runs it with:
#   WALK_BIN_DIR     a directory holding `preflix-webhookd` and `examples/receiver` already built: the
#                    blocks then run in a scratch copy of the repository whose target/release links
#                    to them, with a `cargo` that does nothing;
#   WALK_DAEMON_PORT, WALK_RECEIVER_PORT   ports put in place of 8790 and 9000 in the README's text;
#   WALK_KEEP        a directory to keep the script, its output and the expected answers in.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -eq 0 ]; then
  set -- "A walk-through with curl" "Receiving events"
fi
work=${WALK_KEEP:-$(mktemp -d)}
mkdir -p "$work"
script=$work/walk.sh
expected=$work/expected.txt
output=$work/output.txt

# The README's text, with the ports swapped when asked.
text=$(sed -e "s/8790/${WALK_DAEMON_PORT:-8790}/g" -e "s/9000/${WALK_RECEIVER_PORT:-9000}/g" "$repo/README.md")

{
  echo 'set -eo pipefail'
  echo "trap 'kill \$(jobs -p) 2>/dev/null || true' EXIT"
  for section in "$@"; do
    grep -qxF "## $section" <<<"$text" || { echo "no section \"## $section\" in README.md" >&2; exit 2; }
  done
} >"$script"
: >"$expected"

# Extracts the blocks of the sections, in README order, writing the script and the expected answers.
printf '%s\n' "$@" >"$work/sections.txt"
awk -v script="$script" -v expected="$expected" -v sections="$work/sections.txt" '
  BEGIN { while ((getline s < sections) > 0) wanted["## " s] = 1; k = 0 }
  /^## / { in_section = ($0 in wanted); next }
  !in_section { next }
  !in_block && /^ *```sh *$/ { in_block = 1; indent = index($0, "`") - 1; prev = "none"; next }
  in_block && /^ *``` *$/ {
    if (prev == "answer") marker()
    in_block = 0; next
  }
  !in_block { next }
  {
    line = substr($0, indent + 1)
    if (line ~ /^#( |$)/ && (prev == "cmd" || prev == "answer")) {
      if (prev == "cmd") k++
      print k "\t" substr(line, 3) >> expected
      prev = "answer"
    } else if (line ~ /^[ \t]*$/) {
      if (prev == "answer") marker()
      print "" >> script; prev = "none"
    } else if (line ~ /^#/) {
      print line >> script; prev = "none"
    } else {
      if (prev == "answer") marker()
      print line >> script; prev = "cmd"
    }
  }
  # On a line of its own even after an answer without a final newline (the daemon sends none).
  function marker() { print "printf \x27\\n@@walk-answer-" k "@@\\n\x27" >> script; prev = "none" }
' <<<"$text"

run_dir=$repo
if [ -n "${WALK_BIN_DIR:-}" ]; then
  # A scratch copy of the repository as `cargo build --release` would leave it.
  run_dir=$work/repo
  mkdir -p "$run_dir/target/release/examples" "$work/fake-bin"
  cp "$repo/README.md" "$run_dir/"
  ln -sf "$WALK_BIN_DIR/preflix-webhookd" "$run_dir/target/release/preflix-webhookd"
  ln -sf "$WALK_BIN_DIR/examples/receiver" "$run_dir/target/release/examples/receiver"
  printf '#!/bin/sh\n# cargo build, already done by the test\nexit 0\n' >"$work/fake-bin/cargo"
  chmod +x "$work/fake-bin/cargo"
  export PATH="$work/fake-bin:$PATH"
fi

# What the walk must leave as it found it: the repository (its files go to a scratch directory).
tree() {
  if [ -n "${WALK_BIN_DIR:-}" ]; then ls -A "$run_dir"; else git -C "$repo" status --porcelain --ignored; fi
}
before=$(tree)
status=0
(cd "$run_dir" && bash "$script") >"$output" 2>"$work/stderr.txt" || status=$?
if [ "$status" -ne 0 ]; then
  echo "the walk stopped with exit $status; its stderr:" >&2
  cat "$work/stderr.txt" >&2
  echo "--- its output:" >&2
  cat "$output" >&2
  exit 1
fi

after=$(tree)
if [ "$before" != "$after" ]; then
  echo "the walk left files in the repository:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi

# Checks each shown answer against the end of what its commands printed.
glob() { # the shown line as a bash pattern: `...` matches anything, the rest literally
  local escaped
  escaped=$(printf '%s' "$1" | sed -e 's/[][*?\\]/\\&/g' -e 's/\.\.\./*/g')
  printf '%s' "$escaped"
}
failed=0
answers=$(cut -f1 "$expected" | uniq)
for k in $answers; do
  mapfile -t want < <(awk -F'\t' -v k="$k" '$1 == k { sub(/^[^\t]*\t/, ""); print }' "$expected")
  # The lines printed since the previous answer's marker.
  mapfile -t got < <(awk -v k="$k" '
    /^@@walk-answer-[0-9]+@@$/ { if ($0 == "@@walk-answer-" k "@@") { for (i = 0; i < n; i++) print lines[i]; exit } n = 0; next }
    { lines[n++] = $0 }' "$output")
  while [ ${#got[@]} -gt 0 ] && [ -z "${got[-1]}" ]; do unset 'got[-1]'; done
  offset=$((${#got[@]} - ${#want[@]}))
  ok=1
  if [ "$offset" -lt 0 ]; then ok=0; fi
  for ((i = 0; ok && i < ${#want[@]}; i++)); do
    pattern=$(glob "${want[$i]}")
    # shellcheck disable=SC2053 # the right side is a pattern on purpose
    [[ "${got[$((offset + i))]}" == $pattern ]] || ok=0
  done
  if [ "$ok" -ne 1 ]; then
    failed=1
    echo "answer $k differs from the README:" >&2
    printf '  shown:   %s\n' "${want[@]}" >&2
    printf '  printed: %s\n' "${got[@]}" >&2
  fi
done
if [ "$failed" -ne 0 ]; then
  echo "--- the walk's stderr:" >&2
  cat "$work/stderr.txt" >&2
  exit 1
fi
echo "walked $(grep -c . "$script") script lines, $(wc -w <<<"$answers") shown answers match"
