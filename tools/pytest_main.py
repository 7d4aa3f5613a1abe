"""Bazel py_test entry point: runs pytest on the test file given as argv[1].

The path arrives as a runfiles-relative path ($(rootpath ...)); Bazel starts the
test in the workspace's runfiles directory, but resolve it explicitly anyway.
"""

import os
import sys

import pytest


def _resolve(path):
    if os.path.exists(path):
        return path
    srcdir = os.environ.get("TEST_SRCDIR", "")
    workspace = os.environ.get("TEST_WORKSPACE", "keras_opt")
    candidate = os.path.join(srcdir, workspace, path)
    return candidate if os.path.exists(candidate) else path


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: pytest_main.py TEST_FILE [pytest args...]")
    test_file = _resolve(sys.argv[1])
    sys.exit(pytest.main([test_file, "-q", "-p", "no:cacheprovider"] + sys.argv[2:]))
