#!/usr/bin/env bash
# The GPU measurements the README's performance section quotes, in one go (about 12 minutes on one H200).
#
#   VITDINO_DATA=/path/to/data bash benchmarks/gpu_suite.sh [out_dir]
#
# Writes one JSON file per measurement into out_dir (default benchmarks/results/<gpu>_gpu-suite-<date>, e.g.
# h200_gpu-suite-2026-12-03: results/ folders are named <machine>_<topic>), and log.txt with
# the GPU's name, versions and every command's stderr. It needs imagenette-96's train split under
# $VITDINO_DATA. Each step has its own time limit and a failure does not stop the ones after it,
# so a partial run still leaves what it measured.
# ONLY="step_vitb12_compile step_vits16_compile" runs just the steps named. Steps after the first block
# are follow-ups, run only when ONLY names them: SDPA=cudnn|flash|... picks the attention kernel of the
# max-autotune step, BEFORE=<dir> holds an older vitdino_core (with benchmarks/epoch_boundary.py) to time
# its epoch ends next to this one's.
set -u
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | awk '{print tolower($NF)}')
out=${1:-benchmarks/results/${gpu:-gpu}_gpu-suite-$(date +%F)}
mkdir -p "$out"
log="$out/log.txt"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

run() {  # run NAME LIMIT_S CMD...: stdout -> NAME.json (NAME as it is if it has an extension), stderr -> log.txt
    local name=$1 limit=$2 file=$1
    shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    [[ $name == *.* ]] || file=$name.json
    echo "=== $name: $*" | tee -a "$log"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$file" 2>> "$log"
    echo "=== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"
  nproc; } >> "$log" 2>&1

step="$py benchmarks/train_step.py --device cuda --threads 0 --dtype bf16 --batch 64 --warmup 3 --repeat 10"
small="--arch vit_small --patch-size 8 --global-size 96 --local-size 48 --local-crops 8 --batch 256 --out-dim 16384"  # imagenette_small (its --batch overrides $step's)
vitb12="--arch vit_base --patch-size 12 --global-size 228 --local-crops 10"  # dino_vitb12
train() {  # train true|false: 80 steps of imagenette_small's real loop, compiled or not; prints metrics.jsonl
    echo "rm -rf /tmp/vitdino_runs && $py -m vitdino_core.train --config imagenette_small --set compile=$1 --set max_steps=80 \
        --set log_every=10 --set output_dir=/tmp/vitdino_runs --set run_name=smoke >&2 && cat /tmp/vitdino_runs/smoke/metrics.jsonl"
}
# ViT-S/16, 2x224 + 6x96 (the CPU anchor's crops), ours against the official-style step in one run
run step_vits16 100 $step --arch vit_small --patch-size 16 --compare --paired
# ViT-B/12 as configs/dino_vitb12.yaml: 2x228 + 10x96; then 3 steps under torch.profiler: its kernels by kind
run step_vitb12 100 $step $vitb12 --profile 3
# configs/imagenette_small.yaml: ViT-S/8, 2x96 + 8x48, batch 256, 16384 prototypes
run step_imagenette_small 100 $step $small
# the data pipeline for the ViT-S/16 crops: CPU workers (48 timed batches: a multiple of every worker count) and the GPU path
run data_pipeline 120 $py benchmarks/data_pipeline.py --device cuda --workers 8 16 --batch 64 --batches 48
# the device path alone, eager and compiled, side by side
run data_pipeline_gpu 60 $py benchmarks/data_pipeline.py --device cuda --skip-cpu-path --workers 8 --batch 64 --batches 48
run data_pipeline_gpu_compile 120 $py benchmarks/data_pipeline.py --device cuda --skip-cpu-path --workers 8 --batch 64 --batches 48 --compile
# the real training loop of imagenette_small (GPU augmentation, 12 loader workers) for 80 steps, eager
run train_imagenette_small.jsonl 120 bash -c "$(train false)"
# torch.compile last: compiling takes minutes
run step_vitb12_compile 230 $step $vitb12 --compile --profile 3
run step_vits16_compile 200 $step --arch vit_small --patch-size 16 --compile
run step_imagenette_small_compile 150 $step $small --compile
# the same loop with compile=true (backbones and the GPU augmentation)
run train_imagenette_small_compile.jsonl 200 bash -c "$(train true)"

# ---- follow-ups (only with ONLY=...)
follow() { [ -n "${ONLY:-}" ] && run "$@"; }
# scaled_dot_product_attention's kernels and the explicit path (eager and compiled) at ViT-B/12's shapes, then the compiled
# ViT-B/12 step with cuDNN attention
follow attention_vitb12 120 $py benchmarks/attention.py --device cuda
follow step_vitb12_compile_cudnn 100 $step $vitb12 --compile --sdpa cudnn
# the compiled ViT-B/12 step with the 96 px crops' attention (65 tokens) computed explicitly, the globals' fused
follow step_vitb12_compile_explicit_local 230 $step $vitb12 --compile --explicit-attention-upto 65 --profile 3
# the compiled ViT-B/12 step with 6 local crops instead of 10 (2x228 + 6x96, the CPU anchor's crop count)
follow step_vitb12_6local_compile 200 $step ${vitb12/--local-crops 10/--local-crops 6} --compile
# the patch embedding (the only convolution) in the default layout, in channels_last and as one matmul, at ViT-B/12's crops, bf16
follow patch_embed_vitb12 60 $py benchmarks/patch_embed.py --device cuda --dtype bf16 --dim 768 --patch-size 12 --sizes 228 96 --crops 128 640
# what an epoch end costs the real loop (imagenette_small eager, 4 steps an epoch, 12 workers), now and in $BEFORE
eb="--config imagenette_small --images 1024 --batch 256 --epochs 4 --set device=cuda --set num_workers=12 --set compile=false"
follow epoch_boundary 50 $py benchmarks/epoch_boundary.py $eb
[ -n "${BEFORE:-}" ] && follow epoch_boundary_before 50 $py "$BEFORE/benchmarks/epoch_boundary.py" $eb
# dino_vitb12's crops on the GPU from ImageNet-sized photos ($VITDINO_DATA/photos, each linked 500 times into one
# ImageFolder class), shrunk to at most 512 px and padded to 512 x 512 (gpu_augment_max_size), eager and compiled
photos=/tmp/vitdino_photos
if [[ " ${ONLY:-} " == *" data_pipeline_gpu_photos"* ]]; then
    mkdir -p $photos/all && for f in "${VITDINO_DATA:-.}"/photos/*; do
        [ -f "$f" ] || continue
        src=$(realpath "$f") name=$(basename "$f")
        for i in $(seq 500); do ln -sf "$src" "$photos/all/${i}_$name"; done; done
fi
dpv="$py benchmarks/data_pipeline.py --device cuda --dataset folder --data-path $photos --global-size 228 --local-size 96 --local-crops 10 --batch 64 --batches 48 --max-size 512 --skip-cpu-path"
follow data_pipeline_gpu_photos 90 $dpv --workers 8 16
follow data_pipeline_gpu_photos_compile 150 $dpv --workers 16 --compile
# inductor's matmul search (Triton templates against cuBLAS, element-wise work fused into the winners): minutes of compiling
follow step_vitb12_autotune 420 $step $vitb12 --compile --compile-mode max-autotune-no-cudagraphs --sdpa "${SDPA:-auto}"
exit 0
