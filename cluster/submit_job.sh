#!/usr/bin/env bash
# Submit a sampling job to a Ray cluster. The driver runs on the head node, where Ray sets
# RAY_ADDRESS so that `volume sample` joins the cluster (no --address needed); the table is
# written on the head node. Rerun the same command to resume a job that was stopped.
#
#   RAY_ADDRESS=http://HEAD:8265 cluster/submit_job.sh            # or: ray attach / port-forward 8265
set -euo pipefail
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"   # the cluster's job server (dashboard port)
# Ray 2.60 heads require token authentication when a token exists (~/.ray/auth_token, or
# RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH); Ray's CLI defaults to none. Set RAY_AUTH_MODE=disabled
# yourself for a cluster without tokens.
: "${RAY_AUTH_MODE:=token}"
export RAY_AUTH_MODE

ray job submit --address "$RAY_ADDRESS" \
  --working-dir . \
  --runtime-env-json '{"excludes": [".venv", "tests", "benchmarks/results"]}' \
  -- volume sample examples/boolean7.toml -n 100000000 -o /home/ubuntu/tables/boolean7.h5 --checkpoint-seconds 60

# Follow it:   ray job logs --address "$RAY_ADDRESS" --follow JOB_ID
# Stop it:     ray job stop --address "$RAY_ADDRESS" JOB_ID      (SIGTERM: counted blocks are saved)
