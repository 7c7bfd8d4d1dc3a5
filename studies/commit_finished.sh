#!/usr/bin/env bash
# Stage the finished (status ok) run records under a results folder, e.g.
#   bash studies/commit_finished.sh results/cpu/min_cmi_vs_ce && git commit -m "..."
# Unfinished runs stay unstaged; a study's multirun.yaml (rewritten by every sweep) is restored.
set -euo pipefail
cd "$(dirname "$0")/.."
folder=${1:?a results folder}
for m in $(git ls-files -o --exclude-standard "$folder" | grep "metrics.json$"); do
  if python -c "import json,sys; sys.exit(json.load(open('$m')).get('status') != 'ok')"; then
    git add "$(dirname "$m")" && echo "staged $(dirname "$m")"
  fi
done
git checkout -- "$folder/multirun.yaml" 2>/dev/null || true
