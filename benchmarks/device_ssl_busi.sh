#!/usr/bin/env bash
# The planned-schedule U-Net benchmark (bench_ssl_busi --schedule planned) as one prepared GPU-machine call.
#
# The GPU machine has Python, torch and numpy/scipy but no network; one call carries at most 64 MiB. The
# payload, made here once by `bash benchmarks/make_devdata.sh WORKDIR` and kept out of git, is .devdata/:
#   sitk.tar.xz       SimpleITK unpacked into a site folder (xz, 28 MB)
#   *.whl             monai and segment_anything wheels
#   busi.tar.xz       the workdir's preprocessed/Dataset003_BUSI (no embeddings) and raw labelsTr (23 MB)
# Run from the repository root:  run(command="bash benchmarks/device_ssl_busi.sh", carry=[".devdata"])
# The workdir lives in .devwork/ (ignored, inside the repository) so a warm machine keeps it and a second call
# continues interrupted runs from their checkpoints. Results come back in $OUT.
# Environment: LIMIT (s for the training, 480), LOADER_S (s for the loader benchmark after it, 60), THREADS (torch threads per run, 1), JOBS (runs at once, 5), WORKERS (loader workers per run, 2),
# SCHEDULE (planned or cpu: bench_ssl_busi's --schedule), PY (python3), DEVICE (cuda), FRACTIONS ("0.1 0.2"), TRAINERS (slowest first),
# BACKGROUND (1: see below).
# BACKGROUND=1: set up, start the benchmark in its own process session (it outlives this call, until the machine
# goes back) writing what it would write to $OUT into .devwork/ssl_out/, and return; device_stage1_busi.sh, the
# next call on the same warm machine, waits for it and brings its files back.
set -u
if [ "${BACKGROUND:-0}" = 1 ]; then
  mkdir -p .devwork/ssl_out
  BACKGROUND=0 OUT="$PWD/.devwork/ssl_out" setsid nohup bash "$0" > .devwork/ssl_out/driver.txt 2>&1 < /dev/null &
  for _ in $(seq 1 "${WAIT_S:-45}"); do sleep 1; [ -s .devwork/ssl_out/ssl_log.txt ] && break; done
  sleep 15
  cat .devwork/ssl_out/driver.txt; tail -c 1500 .devwork/ssl_out/ssl_log.txt 2>/dev/null | tr '\r' '\n' | tail -n 5
  exit 0
fi
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
start=$(date +%s)
site=/tmp/sampref_site
if [ ! -d "$site/SimpleITK" ]; then
  mkdir -p "$site"
  tar xJf .devdata/sitk.tar.xz -C "$site"
  pip install -q --no-deps --target "$site" .devdata/*.whl
fi
work=.devwork
[ -d "$work/preprocessed" ] || { mkdir -p "$work" && tar xJf .devdata/busi.tar.xz -C "$work"; }
export PYTHONPATH="$site:$PWD" HF_HUB_OFFLINE=1 SAMPREF_BENCH_THREADS=${THREADS:-1}
nproc
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true
echo "setup $(( $(date +%s) - start )) s"
left=$(( ${LIMIT:-480} - ($(date +%s) - start) ))
# shellcheck disable=SC2086
timeout -k 5 "$left" "${PY:-python3}" -m benchmarks.bench_ssl_busi --workdir "$work" --no-plan --schedule "${SCHEDULE:-planned}" \
  --device "${DEVICE:-cuda}" --jobs "${JOBS:-5}" --num-workers "${WORKERS:-2}" --fractions ${FRACTIONS:-0.1 0.2} \
  --trainers ${TRAINERS:-FixMatch UAMT CPS MeanTeacher UNet} --json "$work/ssl_busi_${SCHEDULE:-planned}_gpu.json" --progress \
  > "$OUT/ssl_log.txt" 2>&1
echo "benchmark rc $? after $(( $(date +%s) - start )) s"
# does the loader keep up with a GPU step? (bench_unet_loader, in the time that is left)
left=$(( ${LIMIT:-480} + ${LOADER_S:-60} - ($(date +%s) - start) ))
[ "$left" -gt 20 ] && [ "${LOADER_S:-60}" -gt 0 ] && timeout -k 5 "$left" "${PY:-python3}" -m benchmarks.bench_unet_loader --workdir "$work" --no-plan \
  --device "${DEVICE:-cuda}" --batches 10 --json "$OUT/unet_loader_gpu.json" > "$OUT/loader_log.txt" 2>&1
cp "$work/ssl_busi_${SCHEDULE:-planned}_gpu.json" "$OUT/" 2>/dev/null || echo "no run finished"
(cd "$work/results" && find . -name training_log.csv -o -name config.json | tar czf "$OUT/runs.tgz" -T -) || true
tail -c 3000 "$OUT/ssl_log.txt" | tr '\r' '\n' | grep -v "^\s*$" | tail -n 15
