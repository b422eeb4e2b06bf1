#!/usr/bin/env bash
# Install the package and the optional benchmark contenders (TorchRL; pinned, CPU torch from
# constraints.txt, never pulled in by --no-deps), then run the benchmark suite.
# Arguments are passed to benchmarks/run.py, e.g. `bash scripts/bench.sh --quick --scenario state`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q -c constraints.txt -e .
python -m pip install -q -c constraints.txt --no-deps -r benchmarks/requirements.txt
python benchmarks/run.py "$@"
