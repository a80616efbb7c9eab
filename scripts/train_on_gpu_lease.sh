#!/usr/bin/env bash
# Train both bundled models side by side on one GPU, for a fixed number of
# minutes, with the frozen test split held out, and leave their checkpoints
# small enough to come back from a lent machine (files of at most 16 MiB).
#
#   here:  python scripts/pack_training_data.py pack .gpu-data   (28.5 MB, ignored by git)
#   there: MINUTES=7.5 bash scripts/train_on_gpu_lease.sh .gpu-data "$OUT"
#
# OUT receives unet.safetensors (float32), maskrcnn.safetensors.part-aa/-ab
# (float16, joined with cat) and logs.tar.gz (each run's log.csv and output).
# The two runs share the GPU; the CPU cores make their batches (the U-Net's
# crops are the cheaper to make and it needs more of them per second).
#
# MODELS=maskrcnn (or unet) trains one model alone, with the other's data
# workers too and, for the Mask R-CNN, 32 crops per iteration unless
# MASKRCNN_BATCH says otherwise. MASKRCNN_INIT / UNET_INIT continue from a
# checkpoint (a path inside the working tree; train_bundled.py --init), with
# MASKRCNN_LR (default 1e-3) for the Mask R-CNN's peak learning rate,
# MASKRCNN_SCALE ("LOW HIGH", default "0.7 1.5") for its crops' scale jitter
# and MASKRCNN_LOWRES (default 0.15) for its share of lost-detail crops.
set -u
packed=$1
out=$2
minutes=${MINUTES:-7.5}
runs=${RUNS:-/tmp/instseg-runs}
models=${MODELS:-unet maskrcnn}
alone=$([ "$(wc -w <<<"$models")" -eq 1 ] && echo 1 || echo 0)
unet_workers=${UNET_WORKERS:-$([ "$alone" = 1 ] && echo 14 || echo 10)}
maskrcnn_workers=${MASKRCNN_WORKERS:-$([ "$alone" = 1 ] && echo 14 || echo 4)}
maskrcnn_batch=${MASKRCNN_BATCH:-$([ "$alone" = 1 ] && echo 32 || echo 16)}
maskrcnn_lr=${MASKRCNN_LR:-1e-3}
read -r -a maskrcnn_scale <<<"${MASKRCNN_SCALE:-0.7 1.5}"
maskrcnn_lowres=${MASKRCNN_LOWRES:-0.15}
for model in $models; do
  case $model in unet | maskrcnn) ;; *) echo "MODELS: unknown model $model" >&2; exit 2 ;; esac
done
unet_init=(${UNET_INIT:+--init "$UNET_INIT"})
maskrcnn_init=(${MASKRCNN_INIT:+--init "$MASKRCNN_INIT"})
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
# EXTRA: more train_bundled.py options for both runs (a smoke test here: --limit 8)
read -r -a extra <<<"${EXTRA:-}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out" "$runs"
start=$(date +%s)
log() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$runs/lease.txt"; }

nvidia-smi -L >>"$runs/lease.txt" 2>&1
"$python" scripts/pack_training_data.py unpack "$packed" "$runs/dsb2018" | tee -a "$runs/lease.txt"

# The validations post-process on the GPU (core/labels/device_instances, device_painting);
# check that code on this device first, and keep validation on the host if it fails.
launcher=(scripts/train_bundled.py)
if timeout 120 "$python" -m pytest -q -x -p no:cacheprovider tests/test_device_instances.py \
    >"$runs/device-tests.txt" 2>&1; then
  log "device post-processing tests passed"
else
  log "device post-processing tests FAILED: validating on the host"
  launcher=(-c "import runpy, sys; import napari_instseg.core.device_instances as d; \
d.MAX_DEVICE_PIXELS = 0; sys.argv = sys.argv[1:]; \
runpy.run_path(sys.argv[0], run_name='__main__')" scripts/train_bundled.py)
fi

# a run stops itself after MINUTES, validates once more and saves; the timeout
# only guards against a hang (the best checkpoint so far stays on disk)
guard=$(python3 -c "print(int(60 * $minutes + 45))")
common=(--device "$device" --data "$runs/dsb2018" --iterations 1000000 --max-minutes "$minutes"
  --sample-weighting balanced --threads 1 "${extra[@]}")
log "training $models for $minutes minutes"
pids=()
if [[ " $models " == *" unet "* ]]; then
  timeout "$guard" "$python" "${launcher[@]}" unet --run-dir "$runs/unet-gpu" "${common[@]}" \
    --batch-size 32 --learning-rate 2e-3 --val-every 3000 --data-workers "$unet_workers" \
    "${unet_init[@]}" >"$runs/unet.txt" 2>&1 &
  pids+=("unet:$!")
fi
if [[ " $models " == *" maskrcnn "* ]]; then
  timeout "$guard" "$python" "${launcher[@]}" maskrcnn --run-dir "$runs/maskrcnn-gpu" \
    "${common[@]}" --batch-size "$maskrcnn_batch" --crop-size 384 --learning-rate "$maskrcnn_lr" \
    --val-every 500 --scale-range "${maskrcnn_scale[@]}" \
    --lowres-probability "$maskrcnn_lowres" --data-workers "$maskrcnn_workers" \
    --config 'anchor_sizes=[[4,8],[12,16],[24,32],[48,64],[96,128]]' \
    "${maskrcnn_init[@]}" >"$runs/maskrcnn.txt" 2>&1 &
  pids+=("maskrcnn:$!")
fi
for entry in "${pids[@]}"; do
  wait "${entry#*:}"; log "${entry%%:*} exited with $?"
done

if [ -f "$runs/unet-gpu/best.safetensors" ]; then
  cp "$runs/unet-gpu/best.safetensors" "$out/unet.safetensors"
fi
if [ -f "$runs/maskrcnn-gpu/best.safetensors" ]; then
  "$python" scripts/train_bundled.py maskrcnn --run-dir "$runs/maskrcnn-gpu" \
    --export "$runs/maskrcnn-half.safetensors"
  split -b 15000000 "$runs/maskrcnn-half.safetensors" "$out/maskrcnn.safetensors.part-"
fi
log "outputs: $(ls "$out" | tr '\n' ' ')"
tar -czf "$out/logs.tar.gz" -C "$runs" lease.txt device-tests.txt unet.txt maskrcnn.txt \
  unet-gpu/log.csv maskrcnn-gpu/log.csv 2>/dev/null
exit 0
