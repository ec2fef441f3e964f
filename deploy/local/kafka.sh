#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) from Maven Central jars, no Docker needed.
#   deploy/local/kafka.sh fetch                          download the jars once
#   deploy/local/kafka.sh start [--port P] [--data-dir D]  start detached, print host:port
#   deploy/local/kafka.sh status [--data-dir D]          exit 0 running, 3 stopped
#   deploy/local/kafka.sh stop [--data-dir D]            stop the pid in D/kafka.pid
# Each command takes --help. The work is done by `python -m pa_devkit.localinfra.kafka`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -x "${repo_root}/.venv/bin/python" ]]; then
    python="${repo_root}/.venv/bin/python"
else
    python="python3"
fi

# No cd: relative paths such as --data-dir stay relative to the caller's folder.
export PYTHONPATH="${repo_root}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${python}" -m pa_devkit.localinfra.kafka "$@"
