#!/usr/bin/env bash
# One visit to a GPU machine for issue 20: every measurement that needs no call, then the GPU
# call if its packages are there. Each step writes its JSON into $OUT as it finishes, so a
# step that runs out of time loses only itself. Total under 8 minutes on an H200.
#
#   OUT=/path/to/results bash benchmarks/gpu_visit.sh        # from the repository root
#
# Needs torch and triton (preinstalled on the lent machines) and the wheels of av, constriction
# and zstandard in /tmp/site; when .whl/ is in the tree (carried) and /tmp/site is missing, the
# script installs them itself. The optional call step needs aiortc and MediaPipe (and their
# dependencies) too; without them it says so and is skipped.
#
# Files in $OUT (8 at most, as the device tool brings back):
#   visit.log                            everything printed, with each step's exit status
#   tune_<device>.json, pinned_table.py  the pinned launches chosen over 5 fresh processes
#                                        (copy pinned_table.py to kernels/ and commit it)
#   bench_<device>.json                  iwcodec bench: receiver per frame (eager = before,
#                                        CUDA graphs = after), stages, Decoder, 1/10/100 streams
#   attention_spread_<device>.json       fused vs best PyTorch at 256 px, N = 1 and 3, 5 processes
#   gpu_tests.xml                        graph vs eager, recapture, custom op, pinned launches
#   bench_compile_<device>.json          torch.compile(model.render) (optional, if time is left)
#   call_gpu_shipped.json                a loopback call with the shipped model (optional)
#
# SMOKE=1 runs the same steps at toy sizes on a CPU (checks the plumbing; no GPU numbers).
set -u
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
export PYTHONPATH="/tmp/site:.${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BUDGET=${BUDGET_S:-470} # seconds; a step starts only if its limit fits what is left
SMOKE=${SMOKE:-0}

step() { # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    if ((SECONDS + limit > BUDGET)); then
        echo "=== SKIP $name: ${limit}s would pass the ${BUDGET}s budget (at ${SECONDS}s)"
        return 0
    fi
    echo "=== $name (limit ${limit}s, at ${SECONDS}s): $*"
    timeout --kill-after=10 "$limit" "$@"
    echo "=== $name: exit status $? at ${SECONDS}s"
}

main() {
if ((!SMOKE)) && [ -d .whl ] && [ ! -d /tmp/site ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv || true
$PY - <<'EOF'
import importlib, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print("torch", torch.__version__, "cuda", torch.version.cuda, gpu)
for name in ("triton", "av", "constriction", "zstandard", "aiortc", "mediapipe"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name} MISSING ({type(exc).__name__}: {exc})")
EOF
git rev-parse HEAD 2>/dev/null || echo "(no git here)"

# 1. Pinned launches: every candidate at the codec's shapes in 5 fresh processes; the lowest
#    median goes into kernels/pinned_table.py (here, for the steps below) and $OUT.
if ((SMOKE)); then
    step tune 60 $PY -m benchmarks.tune --out "$OUT" --smoke --processes 2 --compile-workers 1
else
    step tune 190 $PY -m benchmarks.tune --out "$OUT" --processes 5 --rep-ms 15 --write-table
fi

# 2. iwcodec bench: receiver (batch 1 end to end eager vs graphs, stages, Decoder) and streams.
if ((SMOKE)); then
    step bench 60 $PY -m iwcodec bench --out "$OUT" --smoke --device cpu --parts receiver,streams
else
    step bench 150 $PY -m iwcodec bench --out "$OUT" --parts receiver,streams --reps 100
fi

# 3. Fused attention vs the best PyTorch composition, 256 px, 1 and 3 keyframes, 5 processes.
if ((SMOKE)); then
    step spread 60 $PY -m benchmarks.attention --out "$OUT" --smoke --cases "smoke N=1" \
        --no-backward --fresh-processes 2
else
    step spread 110 $PY -m benchmarks.attention --out "$OUT" --quick \
        --cases "256px N=1,256px N=3" --no-backward --fresh-processes 5 --rep-ms 25
fi

# 4. GPU tests: graph vs eager, recapture, threads, custom op, pinned launches; then (results
#    in the log only) torch.compile of the render and the kernels at real shapes (autotuned).
step tests 90 $PY -m pytest -q -p no:cacheprovider --junitxml "$OUT/gpu_tests.xml" \
    -k "not torch_compile" tests/test_render_gpu.py tests/test_kernels_ops.py \
    tests/test_kernels_pinned.py

# 5. Optional: a call between two peers on this machine with the shipped model (the real
#    sender: face tracking on the bundled sample retimed to 30 fps, detector, rendering here).
if ((!SMOKE)) && $PY -c "import aiortc, mediapipe, av" 2>/dev/null; then
    step call 75 $PY - "$OUT/call_gpu_shipped.json" <<'EOF'
import asyncio, json, sys, tempfile, time
from fractions import Fraction
from pathlib import Path

import torch

from codec.weights import DEFAULT_WEIGHTS, load_model
from iwcodec.call.loopback import Peer, retimed_sample, run_pair
from iwcodec.call.measure import machine, summarize
from sender.call import SendOptions

model = load_model(DEFAULT_WEIGHTS, device=torch.device("cuda"))
source = retimed_sample(Path(tempfile.mkdtemp()) / "in30.mp4", Fraction(30))
send = SendOptions(timeline=True)
peers = [Peer(model, source, send, "tone", render=True) for _ in range(2)]
start = time.time()
reports = asyncio.run(run_pair(*peers, 30.0, timeline=True))
bad = [r for r in reports if isinstance(r, BaseException)]
if bad:
    raise bad[0]
result = {
    "what": "two peers on one GPU machine over loopback, shipped weights on CUDA, both send "
    "(FileSource, FaceTracker, detector) and render; steady = after the first 3 s",
    "device": torch.cuda.get_device_name(0),
    "seconds": 30.0,
    "wall_s": time.time() - start,
    "machine": machine(),
    "sides": summarize(reports, True),
}
Path(sys.argv[1]).write_text(json.dumps(result, indent=1))
for name, side in result["sides"].items():
    lat = side.get("latency_shown_here") or {}
    print(f"{name}: shown {side['fps_shown']} fps, glass to glass median {lat.get('median_ms')} "
          f"p90 {lat.get('p90_ms')} ms, data {side['wire_kbps_sent_data']} kbps sent, "
          f"render {side['render_ms']} ms")
EOF
else
    echo "=== SKIP call: smoke run, or aiortc, MediaPipe or av is not importable (carry wheels)"
fi

# 6. If time is left: the slow GPU tests and torch.compile of the whole render.
step slow-tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py \
    tests/test_render_gpu.py::test_torch_compile_of_the_render_runs_and_matches_eager

((SMOKE)) || step compile 90 $PY -m iwcodec bench --out "$OUT" --name bench_compile.json \
    --parts receiver --sources 1 --reps 50 --frames 60 --compile --no-profile

echo "=== done at ${SECONDS}s"
ls -la "$OUT"
}

main 2>&1 | tee -a "$OUT/visit.log"
