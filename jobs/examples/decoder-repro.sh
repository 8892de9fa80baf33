#!/usr/bin/env bash
# The decoder-training reproduction of docs/decoder-training.md (issue 27), every command in order:
#   photos -> train-vae (the teacher) -> encode train and test crops with the teacher
#   -> train-decoder: lean, taesd, tae-192 against the original images, and lean against the
#      teacher's decode -> latentmill eval with every baseline (the Pareto table, eval/grid.png).
# Sized for 60 minutes on a 2-core CPU machine (`make decoder-repro`). Every size is a variable, so
# tests/test_decoder_repro.py runs the same script in miniature:
#   WORK=./decoder-repro TRAIN_CROPS=4096 TEACHER_STEPS=... bash jobs/examples/decoder-repro.sh
# RUN_FLAGS go to every `latentmill run` (e.g. "--address local" beside another Ray instance);
# TEACHER_SETS and DECODER_SETS are extra `--set` arguments (e.g. "--set tiny=true").
# Writes WORK/timings.tsv: each step's wall seconds and the load average before and after it.
set -euo pipefail

WORK=$(realpath -m "${WORK:-./decoder-repro}")
LATENTMILL=${LATENTMILL:-latentmill}
PYTHON=${PYTHON:-python}
RUN_FLAGS=${RUN_FLAGS:-}
TRAIN_CROPS=${TRAIN_CROPS:-4096}
TEST_CROPS=${TEST_CROPS:-64}
TEACHER_CROPS=${TEACHER_CROPS:-1024}
TEACHER_CROP_SIZE=${TEACHER_CROP_SIZE:-96}
SIZE=${SIZE:-64}
TEACHER_TRAIN_CROP=${TEACHER_TRAIN_CROP:-32}   # the teacher's random training crops (jobs/examples/train-vae.yaml's)
TEACHER_STEPS=${TEACHER_STEPS:-1500}
LEAN_STEPS=${LEAN_STEPS:-1000}
TAESD_STEPS=${TAESD_STEPS:-500}
TAE192_STEPS=${TAE192_STEPS:-400}
# tae-192 costs ~9x taesd per pixel: it trains on random 32-pixel crops of the latents (4 cells), 8 per worker.
TAE192_SETS=${TAE192_SETS:---set data.crop=4 --set optim.batch_size=8}
TEACHER_SETS=${TEACHER_SETS:-}
DECODER_SETS=${DECODER_SETS:-}
SHARD=${SHARD:-256}

mkdir -p "$WORK"
TIMINGS="$WORK/timings.tsv"
printf 'step\twall_s\tload_before\tload_after\n' > "$TIMINGS"

step() {  # step NAME COMMAND...: run it, and record its wall time and the load around it
    local name=$1 started load
    shift
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    started=$(date +%s.%N)
    echo "== $name: $*"
    "$@"
    awk -v n="$name" -v s="$started" -v e="$(date +%s.%N)" -v a="$load" -v b="$(cut -d' ' -f1-3 /proc/loadavg)" \
        'BEGIN { printf "%s\t%.1f\t%s\t%s\n", n, e - s, a, b }' >> "$TIMINGS"
}

# RUN_FLAGS and *_SETS are unquoted on purpose: word lists.
step photos-teacher $PYTHON -m jobs.train.sample_photos "$WORK/photos/vae-train" --count "$TEACHER_CROPS" \
    --size "$TEACHER_CROP_SIZE"
step photos-train $PYTHON -m jobs.train.sample_photos "$WORK/photos/train" --count "$TRAIN_CROPS" --size "$SIZE"
step photos-test $PYTHON -m jobs.train.sample_photos "$WORK/photos/test" --count "$TEST_CROPS" --size "$SIZE" \
    --photos coffee,chelsea --seed 1

# The teacher trains on random TEACHER_TRAIN_CROP crops of larger crops of the same photos (jobs/examples/train-vae.yaml).
step teacher $LATENTMILL run jobs/examples/train-vae.yaml $RUN_FLAGS --set "data.train_url=$WORK/photos/vae-train" \
    --set "data.held_out_url=$WORK/photos/test" --set "data.crop=$TEACHER_TRAIN_CROP" --set "optim.steps=$TEACHER_STEPS" \
    --set "output.url=$WORK/teacher" $TEACHER_SETS
TEACHER="$WORK/teacher/vae"

for split in train test; do
    step "encode-$split" $LATENTMILL run jobs/examples/encode.yaml $RUN_FLAGS --set "name=encode-$split" \
        --set "input.url=$WORK/photos/$split" --set "output.url=$WORK/enc-$split" --set "model.reference=$TEACHER" \
        --set "image.height=$SIZE" --set "image.width=$SIZE" --set "output.samples_per_shard=$SHARD"
done

distil() {  # distil NAME ARCHITECTURE STEPS [--set ...]: train-decoder on the teacher's latents
    local name=$1 arch=$2 steps=$3
    shift 3
    step "$name" $LATENTMILL run jobs/examples/train-decoder.yaml $RUN_FLAGS --set "name=$name" \
        --set "data.urls=[$WORK/enc-train]" --set "architecture=$arch" --set "optim.steps=$steps" \
        --set "output.url=$WORK/$name" $DECODER_SETS "$@"
}
distil distil-lean lean "$LEAN_STEPS"
distil distil-taesd taesd "$TAESD_STEPS"
distil distil-tae-192 tae-192 "$TAE192_STEPS" $TAE192_SETS
distil distil-lean-teacher lean "$LEAN_STEPS" --set target=reference   # the second target: the teacher's decode

# The reference row is the teacher (the encode output's record names it); the baselines fit on enc-train.
step eval $LATENTMILL eval "$WORK/enc-test" --decoder "$WORK/distil-lean/decoder" \
    --decoder "$WORK/distil-taesd/decoder" --decoder "$WORK/distil-tae-192/decoder" \
    --decoder "$WORK/distil-lean-teacher/decoder" --train-data "$WORK/enc-train" --baseline grey \
    --baseline mean-colour --baseline linear --baseline untrained:lean --out "$WORK/eval"
echo "timings: $TIMINGS; table: $WORK/eval/eval.md; grid: $WORK/eval/grid.png"
