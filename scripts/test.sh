#!/usr/bin/env bash
# Install what the tests need (pinned by constraints.txt), lint, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q -c constraints.txt -e ".[test]"
python -m ruff check .
python -m pytest -q "$@"
