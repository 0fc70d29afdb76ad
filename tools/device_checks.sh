#!/usr/bin/env bash
# The speed issue's checks on a lent GPU machine, as one prepared command sized to the device tool's limits
# (15 minutes of device time a session, starts included; 10 minutes a command; 8 files back from $OUT).
#
#   bash tools/device_checks.sh --prepare [REV]   # here, once: fills .device/ (ignored by git) with the glyphs100
#                                                 # npz and REV's packages (default 0d97c2a, the commit before the
#                                                 # speed issue), and records this checkout's commit (so
#                                                 # prepare again after committing)
#   device run: command "bash tools/device_checks.sh", carry [".device"], timeout_s 590
#   QUICK=1 DEVICE=cpu OUT=/tmp/dev bash tools/device_checks.sh   # here: the same steps, tiny, on the CPU
#
# Environment: OUT (where the files go; the device tool sets it), DEVICE (cuda), PY (python3), QUICK (tiny runs),
# DEVICE_DIR (the prepared folder, .device), GLYPHS100 (the npz to prepare from, ../shared/data/glyphs100.npz).
#
# There, python3 is the image's (it holds torch; no hatch): the packages are imported from this tree through
# PYTHONPATH, the earlier revision's from .device/<REV>. Steps, each under its own time limit (a step that fails
# or runs out is logged and the next one runs); what comes back, under $OUT:
#   env.txt             the GPU, driver, python, torch
#   log.txt             every step's output
#   smoke.json          the main job for 2 epochs on the GPU (its metrics.json): does a whole run work there
#   run-off.json        bench run: iCaRL and DGR, 10 phases, eager (run-on.json: compiled, compilation included),
#   run-on.json         split into training steps, teacher, evaluation, memory, checkpoints, beside the
#                       reference loop on the same GPU
#   revisions-*.json    bench revisions, REV against this tree on glyphs100-lt, one method per file, the two
#                       revisions run one after the other (--alternate): the whole-run goal on a GPU
# The tables come back in log.txt; `hatch run bench revisions --table-only --json FILE` rebuilds one from its file.
set -uo pipefail
cd "$(dirname "$0")/.."

PREPARED=${DEVICE_DIR:-.device}  # relative to the repository root (carry names it)
if [ "${1:-}" = "--prepare" ]; then
  rev=${2:-0d97c2a}
  git rev-parse --verify --quiet "$rev^{commit}" >/dev/null || { echo "error: $rev is not a commit here" >&2; exit 2; }
  npz=${GLYPHS100:-../shared/data/glyphs100.npz}
  [ -f "$npz" ] || { echo "error: no $npz (set GLYPHS100=PATH)" >&2; exit 2; }
  rm -rf "$PREPARED" && mkdir -p "$PREPARED/$rev"
  cp "$npz" "$PREPARED/glyphs100.npz" && chmod u+w "$PREPARED/glyphs100.npz"
  git archive "$rev" packages | tar -x -C "$PREPARED/$rev"
  echo "$rev" > "$PREPARED/before"
  head=$(git rev-parse --short HEAD)
  [ -n "$(git status --porcelain --untracked-files=no)" ] && head="$head+changes"
  echo "$head" > "$PREPARED/head"
  echo "prepared $PREPARED: $(du -sh "$PREPARED" | cut -f1) (glyphs100.npz, $rev's packages; this tree is $head)"
  exit 0
fi

OUT=${OUT:-bench-results/device}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
QUICK=${QUICK:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/packages/cil-losses/src:$PWD/packages/cil-models/src:$PWD/packages/cil-data/src:$PWD/packages/cil-train/src"
[ -f "$PREPARED/before" ] || { echo "error: run 'bash tools/device_checks.sh --prepare' first (and carry .device)" >&2; exit 2; }
before=$(cat "$PREPARED/before")
head=$(cat "$PREPARED/head")
log="$OUT/log.txt"
: > "$log"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*" | tee -a "$log"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed=1
}

{
  date -u
  nvidia-smi -L 2>&1 || echo "no nvidia-smi"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  nproc
  echo "this tree: $head; before: $before"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$log"

# limits in seconds: smoke, bench run eager, bench run compiled, each bench revisions (at most 550 s in all)
if [ -n "$QUICK" ]; then
  smoke_args=(--epochs 1 --phases 2 --backbone resnet8)
  run_args=(--quick)
  run_modes=(off)  # compiling on the CPU would take minutes
  rev_args=(--phases 2 --epochs 1 --backbone resnet8)
  rev_threads=1
  limits=(120 180 180 180)
else
  smoke_args=(--epochs 2)
  run_args=(--threads 4 --workers 8)  # 8 loader workers for the reference loop (16 cores)
  run_modes=(off on)
  rev_args=(--preset glyphs100-lt --data-root "$PWD/$PREPARED/glyphs100.npz")
  rev_threads=4
  limits=(50 100 140 130)
fi

step smoke "${limits[0]}" "$PY" -m cil_train --device "$DEVICE" "${smoke_args[@]}" --no-plots --progress none \
  --out "$scratch/smoke"
[ -f "$scratch/smoke/metrics.json" ] && cp "$scratch/smoke/metrics.json" "$OUT/smoke.json"

for mode in "${run_modes[@]}"; do  # eager and compiled apart: a compilation that runs out keeps the eager figures
  limit=${limits[1]}
  [ "$mode" = on ] && limit=${limits[2]}
  step "run-$mode" "$limit" "$PY" tools/bench.py run --methods icarl,dgr --device "$DEVICE" --compile "$mode" \
    "${run_args[@]}" --json "$OUT/run-$mode.json"
done

for method in icarl dgr; do
  step "revisions-$method" "${limits[3]}" "$PY" tools/bench.py revisions "$PREPARED/$before" . --names "$before,$head" \
    --methods "$method" --alternate --threads "$rev_threads" --json "$OUT/revisions-$method.json" -- --device "$DEVICE" "${rev_args[@]}"
done

echo "== done: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$log"
exit $failed
