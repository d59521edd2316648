#!/usr/bin/env bash
# The first hour of a new user, scripted (issue 23): a fresh copy of the repository and a fresh venv, the
# README's commands as written there (read from README.md, not copied here), the printed table checked;
# then the generated model card's snippet in a second venv that has only the packages the card names (no
# hf-sbir), and the Space started as the README says and searched in Chromium with its default gallery.
#
#   bash .ci/newcomer.sh        # from anywhere; needs network or a pip cache, chromium, and playwright in
#                               # the calling python (CI installs both before the test suite)
#
# Nothing is written into this checkout: the copy, the venvs and the outputs live in a temp folder that is
# removed at the end. pip's own cache is reused. The embedded data and the Space's gallery index go where a
# newcomer's would (~/.cache/hf_sbir, or $HF_SBIR_CACHE).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
HOST_PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/hf-sbir-newcomer.XXXXXX")"
SPACE_PID=""
cleanup() {
  if [ -n "$SPACE_PID" ]; then kill "$SPACE_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
SECONDS=0
step() { echo "[newcomer ${SECONDS}s] $*"; }
fail() { echo "newcomer: FAILED: $*" >&2; exit 1; }

step "a fresh copy of the repository in $WORK/hf-sbir (tracked + untracked-not-ignored files)"
mkdir "$WORK/hf-sbir"
(cd "$REPO" && git ls-files -co --exclude-standard -z | tar --null -T - --ignore-failed-read -cf -) | tar -xf - -C "$WORK/hf-sbir"
cd "$WORK/hf-sbir"

step "a fresh venv"
"$HOST_PYTHON" -m venv "$WORK/venv"
VENV_BIN="$WORK/venv/bin"
if "$VENV_BIN/python" -c "import hf_sbir" 2>/dev/null; then fail "hf_sbir is importable in the fresh venv before installing"; fi

readme_block() {  # readme_block SECTION LINE: line LINE (1-based) of the first bash block under "## SECTION"
  "$VENV_BIN/python" - "$1" "$2" <<'EOF'
import re, sys
text = open("README.md", encoding="utf-8").read()
section = text.split(f"## {sys.argv[1]}\n", 1)[1].split("\n## ", 1)[0]
block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
print(block.splitlines()[int(sys.argv[2]) - 1].split("  #")[0].strip())
EOF
}

QUICKSTART="$(readme_block Quickstart 1)"
step "README Quickstart command 1: $QUICKSTART"
status=0
(export PATH="$VENV_BIN:$PATH"; eval "$QUICKSTART") > "$WORK/quickstart.log" 2>&1 || status=$?
grep -vE "it/s\]|s/it\]|^ *(Requirement already|Collecting|Downloading|Using cached)" "$WORK/quickstart.log" | tail -40
[ "$status" = 0 ] || fail "README command 1 exited with status $status (log above)"

step "the printed table"
"$VENV_BIN/python" - "$WORK/quickstart.log" <<'EOF' || fail "the Quickstart's printed table is not what the README describes"
import re, sys
log = open(sys.argv[1], encoding="utf-8").read()
assert "| metric | before fine-tuning | after |" in log, "no before/after table"
rows = dict((m[0], (float(m[1]), float(m[2]))) for m in re.findall(r"^\| ([\w@]+) \| ([\d.]+) \| ([\d.]+) \|$", log, re.M))
expected = {"map@all", "map@200", "p@100", "p@200", "photo_map@all"}
assert set(rows) == expected, rows
assert all(0.0 <= v <= 100.0 for pair in rows.values() for v in pair), rows
assert "Model saved to outputs/quickstart/model" in log, "no 'Model saved to' line"
print("table:", {k: v for k, v in rows.items()})
EOF

MODEL=outputs/quickstart/model
for f in config.json model.safetensors preprocessor_config.json image_processing_sbir.py README.md; do
  [ -f "$MODEL/$f" ] || fail "$MODEL/$f is missing"
done

step "the model card's snippet, in a venv with only the packages the card names"
INSTALL="$(grep -o 'pip install torch transformers[^`]*' "$MODEL/README.md" | head -1)"
[ -n "$INSTALL" ] || fail "the model card names no pip install line"
"$HOST_PYTHON" -m venv "$WORK/bare"
BARE="$WORK/bare/bin/python"
# shellcheck disable=SC2086  # the card's line, split into words as a shell would
"$BARE" -m $INSTALL -q
if "$BARE" -c "import hf_sbir" 2>/dev/null; then fail "hf_sbir is importable in the bare venv"; fi
# Run it next to a copy of the folder at the card's (relative) path, away from the repository's hf_sbir/.
mkdir -p "$WORK/standalone/outputs/quickstart"
cp -r "$MODEL" "$WORK/standalone/$MODEL"
"$VENV_BIN/python" - "$MODEL/README.md" > "$WORK/standalone/snippet.py" <<'EOF'
import re, sys
print(re.search(r"```python\n(.*?)```", open(sys.argv[1], encoding="utf-8").read(), re.S).group(1))
EOF
(cd "$WORK/standalone" && "$BARE" snippet.py) || fail "the model card's snippet failed without hf-sbir (after: $INSTALL)"

SPACE_INSTALL="$(readme_block Space 1)"
step "README Space: $SPACE_INSTALL; app.py with its defaults, searched in Chromium"
(export PATH="$VENV_BIN:$PATH"; eval "$SPACE_INSTALL" -q)
PORT="$("$VENV_BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
GRADIO_ANALYTICS_ENABLED=False GRADIO_SERVER_PORT="$PORT" "$VENV_BIN/python" spaces/sketch-an-anchor/app.py \
  > "$WORK/space.log" 2>&1 &
SPACE_PID=$!
for _ in $(seq 1 180); do
  if "$VENV_BIN/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=2)" 2>/dev/null; then break; fi
  kill -0 "$SPACE_PID" 2>/dev/null || { cat "$WORK/space.log"; fail "the Space exited"; }
  sleep 1
done
"$HOST_PYTHON" - "$REPO" "http://127.0.0.1:$PORT/" <<'EOF' || { tail -30 "$WORK/space.log"; fail "searching the Space in Chromium"; }
import os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from playwright.sync_api import sync_playwright
from test_space import CHROMIUM, CHROMIUM_ARGS, draw_and_search
from hf_sbir.data import load_sbir_dataset

labels = set(load_sbir_dataset("embedded", split="embedded")["train"].features["label"].names)
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        draw_and_search(page, sys.argv[2], "Gallery: embedded,", labels, k=8)
    finally:
        browser.close()
print("the Space found photos for a drawn sketch in its default gallery")
EOF
if grep -q "Traceback\|InvalidPathError" "$WORK/space.log"; then cat "$WORK/space.log"; fail "the Space logged an error"; fi
# The Space's gallery index for this throwaway model: not worth keeping in the user's cache.
rm -rf "$("$VENV_BIN/python" -c 'import sys; sys.path.insert(0, "spaces/sketch-an-anchor"); import sketch_search as s; print(s.gallery_cache_dir(s.resolve_model_path(None), "embedded"))')"
step "passed"
