#!/usr/bin/env bash
# Install the package (CPU torch pinned by constraints.txt) and run the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q -c constraints.txt -e .
python examples/demo.py "$@"
