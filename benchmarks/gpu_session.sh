#!/usr/bin/env bash
# The GPU measurements in docs/benchmarks.md, as one script for a lent GPU machine whose image
# has torch but no network: the Fashion-MNIST files travel in .bench-data/ (git-ignored).
#   cp -r /usr/share/datasets/fashion-mnist .bench-data/   # once, on the development machine
#   bash benchmarks/gpu_session.sh "$OUT"                 # PARTS="table overhead throughput speed"
# Each part has its own time limit (TABLE_S, OVERHEAD_S, THROUGHPUT_S, SPEED_S) and writes its
# output to $OUT as it goes, so a part cut short still leaves the others' results.
set -u
OUT=${1:-/tmp/out}
PARTS=${PARTS:-"overhead"}  # the one GPU figure still open (issue 5); add "table speed" to redo those
mkdir -p "$OUT" /usr/share/datasets
cp -r .bench-data/fashion-mnist /usr/share/datasets/
editables=(-e .)
for p in plugins/*/; do if [ -f "$p/pyproject.toml" ]; then editables+=(-e "$p"); fi; done
python3 -m pip install -q --no-deps --no-build-isolation "${editables[@]}" > "$OUT/pip.txt" 2>&1 || tail -5 "$OUT/pip.txt"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
python3 -c "import torch, kdcore; print('torch', torch.__version__, torch.cuda.get_device_name(), 'kdcore', kdcore.__version__)"
python3 -m kdcore plugins | grep -c "  ok" || true
export KDCORE_CACHE_DIR=/tmp/kdcache PYTHONUNBUFFERED=1
for part in $PARTS; do
  case $part in
  table)
    timeout "${TABLE_S:-330}" python3 benchmarks/method_table.py --seeds 3 --epochs 5 --labelled 2000 \
      --val-split 5000 --parallel 8 --device cuda --device-label "$GPU" --runs-dir /tmp/runs \
      --out "$OUT/benchmarks.md" --json "$OUT/method_table.json" > "$OUT/method_table.txt" 2>&1
    echo "method table rc=$?"; tail -25 "$OUT/method_table.txt" ;;
  overhead)
    # 2400 steps per arm (96 rounds), with the hand-against-itself control: about 2 minutes
    timeout "${OVERHEAD_S:-240}" python3 benchmarks/overhead.py --device cuda --steps 2400 --progress \
      --control --json "$OUT/overhead.json" > "$OUT/overhead.txt" 2>&1
    echo "overhead rc=$?"; tail -16 "$OUT/overhead.txt" ;;
  overhead_large)  # the same KD step on CIFAR-size ResNets, where the GPU step is not launch-bound
    timeout "${OVERHEAD_S:-120}" python3 benchmarks/overhead.py --device cuda --methods kd --steps 300 \
      --set student.type=resnet8x4 --set teachers.0.type=resnet32x4 \
      --json "$OUT/overhead_large.json" > "$OUT/overhead_large.txt" 2>&1
    echo "overhead_large rc=$?"; tail -6 "$OUT/overhead_large.txt" ;;
  throughput)
    timeout "${THROUGHPUT_S:-150}" python3 benchmarks/cpu_throughput.py --steps 200 --repeats 2 \
      --json "$OUT/throughput.json" > "$OUT/throughput.txt" 2>&1
    echo "throughput rc=$?"; tail -10 "$OUT/throughput.txt" ;;
  speed)
    timeout "${SPEED_S:-200}" python3 benchmarks/speed_switches.py --device cuda --epochs 3 --repeats 1 \
      ${SPEED_ROWS:+--rows "$SPEED_ROWS"} --out /tmp/speed --json "$OUT/speed.json" > "$OUT/speed.txt" 2>&1
    echo "speed rc=$?"; tail -12 "$OUT/speed.txt" ;;
  esac
done
