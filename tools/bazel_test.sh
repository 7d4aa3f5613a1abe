#!/usr/bin/env bash
# Run `bazel test` offline: every external repository Bazel would download is
# overridden with a local stand-in: the mock repositories that Debian's
# bazel-bootstrap-source ships, and third_party/bazel/remote_coverage_tools (in
# this repository). The recipe is in README.md, section "Bazel".
# Usage: bash tools/bazel_test.sh [bazel test args/targets...]   (default //:all)
set -euo pipefail

MOCK_REPOS=/usr/src/bazel-bootstrap/mock_repos
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v bazel >/dev/null 2>&1 || [ ! -d "$MOCK_REPOS" ]; then
  echo "error: bazel (Debian's bazel-bootstrap) or its mock repositories are missing." >&2
  echo "Install them with:" >&2
  echo "  apt-get update && apt-get install -y bazel-bootstrap bazel-bootstrap-source" >&2
  exit 1
fi

flags=()
for repo in "$MOCK_REPOS"/*/; do
  repo="${repo%/}"
  flags+=("--override_repository=$(basename "$repo")=$repo")
done
flags+=("--override_repository=remote_coverage_tools=$ROOT/third_party/bazel/remote_coverage_tools")

# Put the directory of the python3 that has tensorflow/pytest first on PATH
# (a pyenv shim would not work inside the test sandbox).
PY="$(python3 -c 'import sys; print(sys.executable)')"
TEST_PATH="$(dirname "$PY"):$PATH"

[ $# -eq 0 ] && set -- //:all

exec bazel test "${flags[@]}" \
  --jobs=2 --local_cpu_resources=2 \
  --test_output=errors \
  --action_env=PATH="$TEST_PATH" \
  --test_env=PATH="$TEST_PATH" \
  --test_env=HOME \
  "$@"
