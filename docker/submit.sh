#!/usr/bin/env bash
# Submit the job to the compose cluster, as `personalize submit` does on the local one
# (personalize/cluster.py: the job file, the project packages shipped with -pyfs, the interpreter).
# Does nothing when a job of that name already runs, so `docker compose up` can be repeated.
# FROM_SAVEPOINT=<path> resumes from a savepoint (docs/operations.md, "Upgrading the job").
set -euo pipefail

# The compose file passes PERSONALIZE_PII_SECRET through without requiring it (so `docker compose down`
# works without it); a job without it would fail on every TaskManager, so it is not submitted.
secret=${PERSONALIZE_PII_SECRET:-}
if (( ${#secret} < 16 )); then
  echo "error: set PERSONALIZE_PII_SECRET to 16+ random bytes (e.g. openssl rand -hex 32 into docker/.env)" >&2
  exit 2
fi

PROJECT=/opt/personalize
PYTHON=/opt/python/bin/python3.11
JOB_NAME=$("$PYTHON" -c 'from personalize import settings; print(settings.load().job.name)')

until "$PYTHON" - "$JOBMANAGER" "$TASKMANAGERS" <<'PY'
import json, sys, urllib.request
overview = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/overview", timeout=5))
sys.exit(0 if overview["taskmanagers"] >= int(sys.argv[2]) else 1)
PY
do
  echo "waiting for $TASKMANAGERS TaskManagers"; sleep 2
done

if "$PYTHON" - "$JOBMANAGER" "$JOB_NAME" <<'PY'
import json, sys, urllib.request
jobs = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/jobs/overview", timeout=5))["jobs"]
sys.exit(0 if any(j["name"] == sys.argv[2] and j["state"] in ("RUNNING", "RESTARTING") for j in jobs) else 1)
PY
then
  echo "job $JOB_NAME already runs; not submitting again"
  exit 0
fi

packages=jobs,operators,state,connectors,personalize,config
pyfs=$(printf "$PROJECT/%s," ${packages//,/ })
args=(run -d -m "$JOBMANAGER")
if [[ -n "${FROM_SAVEPOINT:-}" ]]; then
  args+=(-s "$FROM_SAVEPOINT")
fi
args+=(-py "$PROJECT/jobs/personalize_job.py" -pyfs "${pyfs%,}" -pyexec "$PYTHON" -pyclientexec "$PYTHON")
cd "$PROJECT"
exec /opt/flink/bin/flink "${args[@]}"
