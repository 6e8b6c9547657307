#!/usr/bin/env bash
# Start/stop a local Prefect server on 127.0.0.1 (analytics off, PREFECT_HOME
# under the run store). Usage: scripts/prefect-server.sh start|stop|status
# Env: WSSS_WORK_DIR (default ./runs), PREFECT_PORT (default 4200).
set -euo pipefail
work_dir=${WSSS_WORK_DIR:-runs}
port=${PREFECT_PORT:-4200}
export PREFECT_HOME=${PREFECT_HOME:-$(realpath -m "$work_dir")/prefect}
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT=$port
url=http://127.0.0.1:$port/api
mkdir -p "$PREFECT_HOME"

healthy() { python -c "import urllib.request,sys; urllib.request.urlopen('$url/health', timeout=2)" 2>/dev/null; }

case "${1:-}" in
  start)
    if healthy; then echo "prefect server already up at $url"; exit 0; fi
    prefect server start --background --host 127.0.0.1 --port "$port" --analytics-off >/dev/null
    for _ in $(seq 1 120); do
      if healthy; then
        echo "prefect server up at $url (PREFECT_HOME=$PREFECT_HOME)"
        echo "export PREFECT_API_URL=$url"
        exit 0
      fi
      sleep 1
    done
    echo "prefect server did not become healthy within 120 s (logs: $PREFECT_HOME)" >&2
    exit 1 ;;
  stop)
    prefect server stop || true ;;
  status)
    if healthy; then echo "up at $url"; else echo "down"; exit 1; fi ;;
  *)
    echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
