#!/usr/bin/env bash
# GPU check for a lent device machine (one H200, no network): environment, CUDA model tests, engine benchmark,
# and, where vLLM is importable, our model against vLLM on the same random weights plus rollouts through
# `engine: openai`. Every step has its own timeout; the whole run is meant to end within ~8 minutes.
#
#   bash scripts/device_check.sh            # on the GPU machine (device tool: command "bash scripts/device_check.sh")
#   bash scripts/device_check.sh --dry-run  # anywhere: CPU sizes, and our own policy server stands in for vLLM
#
# Exit status: 0 when every step that ran passed (skipped steps do not count), else 1.
# Results: $OUT/device_check.md (summary), $OUT/steps.log (every step's output) and a JSON file per step
# (env.json, bench.json, compare.json, rollouts.json; vllm.log when vLLM ran): at most 8 files, as the
# device tool returns. Without $OUT a temporary directory is used and named at the end.
# Needs: python3 with torch (CUDA on the GPU machine). The policy-server stack (rollouts, dry-run upstream)
# also needs fastapi, pydantic, uvicorn, orjson and itsdangerous: carry them as wheels in .whl/ (see
# scripts/README.md), they are installed from there without an index. vLLM is used only if importable.
set -uo pipefail

DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

# --fetch-wheels (run HERE, where PyPI answers, before the device call): the server stack's packages that the
# device image lacks, as Python 3.12 x86-64 wheels in .whl/ (git-ignored, ~3 MB);
# then call the device tool with carry [".whl"].
STACK_WHEELS=(fastapi starlette pydantic pydantic-core annotated-types typing-inspection uvicorn orjson itsdangerous)
if [[ "${1:-}" == "--fetch-wheels" ]]; then
    rm -rf .whl
    PIP_PY="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
    # The versions this checkout's venv has, where it has them (pydantic and pydantic-core must match).
    pins=()
    for name in "${STACK_WHEELS[@]}"; do
        version=$("$PIP_PY" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null)
        pins+=("$name${version:+==$version}")
    done
    exec "$PIP_PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${pins[@]}"
fi
OUT="${OUT:-$(mktemp -d /tmp/device_check.XXXXXX)}"
mkdir -p "$OUT"
MD="$OUT/device_check.md"
LOG="$OUT/steps.log"
WORK="$(mktemp -d /tmp/device_check_work.XXXXXX)"
SERVER_PID=""
START=$(date +%s)
BUDGET_S="${DEVICE_CHECK_BUDGET_S:-520}"  # the vLLM section starts only if enough of this is left
export PYTHONUNBUFFERED=1

stop_server() {  # the upstream started below: its process group, TERM then KILL after 10 s
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || kill -KILL "$SERVER_PID" 2>/dev/null
    fi
    SERVER_PID=""
}
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{
    echo "# Device check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    echo "Mode: $([[ $DRY_RUN == 1 ]] && echo "dry run (CPU sizes; our policy server stands in for vLLM)" || echo "GPU")."
    echo "Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')."
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---|"
} >"$MD"
NOTES=()
FAILED=0

# step NAME TIMEOUT_S COMMAND...: run with a timeout, log to steps.log, add a row to the summary.
step() {
    local name=$1 limit=$2 begin rc
    shift 2
    begin=$(date +%s)
    echo "===== $name (timeout ${limit}s) $(date -u +%H:%M:%S): $*" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local verdict="ok"
    [[ $rc == 124 || $rc == 137 ]] && verdict="**timed out** (${limit}s)"
    [[ $rc != 0 && $verdict == ok ]] && verdict="**failed** (exit $rc)"
    [[ $rc != 0 ]] && FAILED=$((FAILED + 1))
    echo "| $name | $verdict | $(($(date +%s) - begin)) |" >>"$MD"
    echo "===== $name: $verdict" | tee -a "$LOG"
    return "$rc"
}

skip() { echo "| $1 | skipped: $2 |  |" >>"$MD"; echo "===== $1: skipped: $2" | tee -a "$LOG"; }

# ---- 1. environment --------------------------------------------------------------------------------------
PY="${PYTHON:-python3}"
if [[ $DRY_RUN == 1 && -x "$ROOT/.venv/bin/python" && -z "${PYTHON:-}" ]]; then PY="$ROOT/.venv/bin/python"; fi
if command -v nvidia-smi >/dev/null; then
    step nvidia-smi 30 nvidia-smi
else
    skip nvidia-smi "not on this machine"
fi

# ---- 2. python environment -------------------------------------------------------------------------------
# Reuse a CUDA torch that is already importable: the device image's python3 has one, and nothing can be
# downloaded there. If that python3 is a plain interpreter, a venv with --system-site-packages sees its torch;
# if it is itself a venv (the device image's is /opt/torch/.venv), a nested venv would see only the base
# interpreter's packages, so it is used as it is. Carried wheels (.whl/) go to a --target dir on PYTHONPATH,
# and so does the project (no `pip install -e '.[dev]'`: its [model] pin wants torch==2.13.0, the CPU build,
# from an index). Only when no CUDA torch is importable is one pip-installed (needs an index; fails offline).
VENV="$WORK/venv"
SITE="$WORK/site"
setup_python() {
    if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "CUDA torch importable from $PY: reusing it"
    elif [[ $DRY_RUN == 1 ]]; then
        echo "dry run: reusing the CPU torch of $PY"
    else
        echo "no CUDA torch importable from $PY: trying pip install torch (needs a package index)"
        "$PY" -m pip install --quiet torch || echo "pip install torch failed: the CUDA steps below will fail or skip"
    fi
    if "$PY" -c "import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)"; then
        echo "$PY is a venv ($("$PY" -c 'import sys; print(sys.prefix)')): used directly"
    else
        "$PY" -m venv --system-site-packages "$VENV" || return 1
        echo "venv $VENV with --system-site-packages over $PY"
    fi
    if [[ $DRY_RUN == 1 ]]; then
        echo "dry run: carried wheels (.whl/, Python 3.12 builds) not installed"
    elif compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || return 1
        echo "installed $(find .whl -name '*.whl' | wc -l) carried wheels into $SITE"
    fi
}
export PY VENV SITE DRY_RUN
export -f setup_python
step python-env 120 bash -c setup_python
VPY="$VENV/bin/python"
[[ -x "$VPY" ]] || VPY="$PY"
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$VPY" - <<'EOF' | tee -a "$LOG"
import importlib.util
missing = [m for m in ("torch", "safetensors", "tokenizers", "jinja2", "numpy", "pytest", "httpx", "yaml",
                       "fastapi", "pydantic", "uvicorn", "orjson", "itsdangerous", "aiohttp", "transformers")
           if importlib.util.find_spec(m) is None]
print("missing modules:", ", ".join(missing) or "none")
EOF
step versions 60 "$VPY" scripts/device_check.py env --out "$OUT/env.json"
HAVE_STACK=0
"$VPY" -c "import fastapi, pydantic, uvicorn, orjson, itsdangerous" 2>/dev/null && HAVE_STACK=1
[[ $HAVE_STACK == 1 ]] || NOTES+=("fastapi/pydantic/uvicorn/orjson/itsdangerous are not importable: no rollouts, no stand-in upstream (carry wheels in .whl/, scripts/README.md).")

# ---- 3. CUDA model tests ---------------------------------------------------------------------------------
step cuda-tests 240 "$VPY" -m pytest -q -rs -p no:cacheprovider tests/model/test_cuda.py \
    tests/model/test_parity.py::test_same_code_on_cuda

# ---- 4. engine benchmark ---------------------------------------------------------------------------------
if [[ $DRY_RUN == 1 ]]; then
    step bench 240 "$VPY" scripts/device_check.py bench --quick --batch 1 8 --new-tokens 12 --budget-s 90 \
        --out "$OUT/bench.json"
else
    # BENCH_BATCHES="1 8 32" (or "") trims the bench to leave time for the vLLM section
    read -r -a batches <<<"${BENCH_BATCHES-1 8 32 128}"
    if ((${#batches[@]})); then
        step bench 270 "$VPY" scripts/device_check.py bench --batch "${batches[@]}" --budget-s 180 \
            --out "$OUT/bench.json"
    else
        skip bench "BENCH_BATCHES is empty"
    fi
fi

# ---- 5. vLLM (or the stand-in) vs our engine, and rollouts through engine: openai ------------------------
free_port() { "$VPY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
wait_healthy() {  # wait_healthy URL SECONDS
    local i
    for ((i = 0; i < $2; i++)); do
        "$VPY" -c "import httpx, sys; sys.exit(0 if httpx.get('$1', timeout=2).status_code == 200 else 1)" \
            2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited"; return 1; }
        sleep 1
    done
    echo "not healthy after $2 s"
    return 1
}

UPSTREAM=""
if "$VPY" -c "import vllm" 2>/dev/null; then
    UPSTREAM=vllm
elif [[ $DRY_RUN == 1 && $HAVE_STACK == 1 ]]; then
    UPSTREAM=standin
fi

LEFT=$((BUDGET_S - ($(date +%s) - START)))
if [[ -n "$UPSTREAM" && $LEFT -lt 240 ]]; then
    skip "$UPSTREAM" "only ${LEFT}s of the ${BUDGET_S}s budget left (DEVICE_CHECK_BUDGET_S)"
    NOTES+=("The $UPSTREAM comparison was skipped for time: rerun with a smaller bench (--batch 1 8 32) or a larger DEVICE_CHECK_BUDGET_S.")
elif [[ -z "$UPSTREAM" ]]; then
    skip vllm "vLLM is not importable$([[ $DRY_RUN == 1 ]] && echo ' and the stand-in needs the server stack')"
    NOTES+=("vLLM is not importable here, so the vLLM comparison and rollouts did not run (the device image has no vllm and no network; a vllm wheel is far over the 64 MiB the device tool carries).")
else
    MODEL_DIR="$WORK/vllm_model"
    step build-model 120 "$VPY" scripts/device_check.py build-vllm-model --out-dir "$MODEL_DIR"
    PORT=$(free_port)
    NAME=dc-nemotron-h
    if [[ $UPSTREAM == vllm ]]; then
        PARSER=$("$VPY" -c "
from vllm.reasoning import ReasoningParserManager as M
try:
    M.get_reasoning_parser('nemotron_v3'); print('nemotron_v3')
except Exception:
    print('deepseek_r1')" 2>/dev/null || echo deepseek_r1)
        # Flags of nemotron_h.md 5.3 (built-in reasoning parser instead of the HF-repo plugin file), plus
        # --enforce-eager (no CUDA-graph capture or compile: minutes saved) and a small memory share.
        setsid "$VPY" -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" --served-model-name "$NAME" \
            --host 127.0.0.1 --port "$PORT" --trust-remote-code --enable-auto-tool-choice \
            --tool-call-parser qwen3_coder --reasoning-parser "$PARSER" --mamba-ssm-cache-dtype float32 \
            --max-model-len 4096 --dtype bfloat16 --gpu-memory-utilization 0.3 --enforce-eager \
            >"$OUT/vllm.log" 2>&1 &
        SERVER_PID=$!
        TOL=0.1  # bf16 weights on both sides; vLLM's kernels differ from ours
    else
        setsid "$VPY" scripts/device_check.py serve-standin --model "$MODEL_DIR" --port "$PORT" \
            --served-name "$NAME" >>"$LOG" 2>&1 &
        SERVER_PID=$!
        TOL=0.001  # the same code on both sides
    fi
    export VPY SERVER_PID
    export -f wait_healthy
    HEALTH_S=$((LEFT - 150 < 230 ? LEFT - 150 : 230))
    if step "$UPSTREAM-start" $((HEALTH_S + 10)) bash -c 'wait_healthy "$@"' _ "http://127.0.0.1:$PORT/health" "$HEALTH_S"; then
        step compare 120 "$VPY" scripts/device_check.py compare --base-url "http://127.0.0.1:$PORT/v1" \
            --served-name "$NAME" --model "$MODEL_DIR" --tolerance "$TOL" --out "$OUT/compare.json"
        if [[ $HAVE_STACK == 1 ]]; then
            step rollouts 150 "$VPY" scripts/device_check.py rollouts --base-url "http://127.0.0.1:$PORT/v1" \
                --served-name "$NAME" --num-tasks 4 --work "$WORK" --out "$OUT/rollouts.json"
        else
            skip rollouts "the server stack (fastapi, pydantic, ...) is not importable"
        fi
    fi
    # engine: vllm -- the policy server starts vLLM itself (the flags of nemotron_h.md 5.3) through gym up's
    # launcher, rollouts go through it, and with DEVICE_CHECK_WEIGHT_TRANSFER=disk a POST /v1/weights reloads
    # the checkpoint through vLLM's weight transfer. Needs a free GPU share: the vLLM above is stopped first.
    LEFT=$((BUDGET_S - ($(date +%s) - START)))
    if [[ $UPSTREAM != vllm ]]; then
        skip managed-vllm "needs vLLM itself (engine: vllm runs \`vllm serve\`)"
    elif [[ $HAVE_STACK != 1 ]]; then
        skip managed-vllm "the server stack (fastapi, pydantic, ...) is not importable"
    elif [[ $LEFT -lt 150 ]]; then
        skip managed-vllm "only ${LEFT}s of the ${BUDGET_S}s budget left"
    else
        stop_server
        MHEALTH=$((LEFT - 60 < 230 ? LEFT - 60 : 230))
        step managed-vllm $((MHEALTH + 50)) "$VPY" scripts/device_check.py managed-vllm --model "$MODEL_DIR" \
            --reasoning-parser "$PARSER" --health-s "$MHEALTH" --work "$WORK" \
            ${DEVICE_CHECK_WEIGHT_TRANSFER:+--weight-transfer "$DEVICE_CHECK_WEIGHT_TRANSFER"}
    fi
fi

# ---- summary ---------------------------------------------------------------------------------------------
"$VPY" - "$OUT" >>"$MD" <<'EOF' 2>>"$LOG"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None
env = load("env.json")
if env:
    print("\n## Environment\n")
    for k in ("gpu", "capability", "gpu_memory_gib", "python", "torch", "torch_cuda", "triton", "transformers", "vllm"):
        if k in env:
            print(f"- {k}: {env[k]}")
bench = load("bench.json")
if bench:
    print(f"\n## Engine decode ({bench['device']}, {bench['dtype']}, {bench['params_M']}M params, "
          f"{bench['prompt_tokens']}-token prompts, {bench['new_tokens']} new tokens, greedy)\n")
    print("| batch | eager tok/s | compile=True tok/s | eager ms/step | compiled ms/step | compile warm-up s |")
    print("|---|---|---|---|---|---|")
    rows = {(r["batch"], r["compile"]): r for r in bench["rows"]}
    for b in sorted({r["batch"] for r in bench["rows"]}):
        e, c = rows.get((b, False), {}), rows.get((b, True), {})
        print(f"| {b} | {e.get('decode_tok_s', e.get('skipped', '-'))} | {c.get('decode_tok_s', c.get('skipped', '-'))} "
              f"| {e.get('ms_per_step', '-')} | {c.get('ms_per_step', '-')} | {c.get('warmup_s', '-')} |")
cmp = load("compare.json")
if cmp:
    print(f"\n## Upstream vs our engine ({cmp['base_url']})\n")
    print(f"- ok: {cmp['ok']}; max |log-prob diff| of the upstream's tokens under our fp32 model: "
          f"{cmp['max_abs_logprob_diff']}; fp32 greedy equal on {cmp['greedy_equal_fp32']}/{cmp['prompts']} prompts")
    for r in cmp["rows"]:
        print(f"- prompt {r['prompt']} ({r['dtype']}): greedy equal {r['greedy_equal']}, first divergence "
              f"{r['first_divergence']}" + (f", max diff {r['max_abs_logprob_diff']}, upstream token = our argmax "
              f"{r['upstream_token_is_our_argmax']}" if "max_abs_logprob_diff" in r else ""))
ro = load("rollouts.json")
if ro:
    print(f"\n## Rollouts through engine: openai\n\n- ok: {ro['ok']}; {ro['rollouts']} rollouts, {ro['failures']} "
          f"failed; {ro['model_items_with_token_fields']} model items carry token fields; problems: {ro['problems']}")
EOF
{
    echo
    echo "## Notes"
    echo
    for note in "${NOTES[@]+"${NOTES[@]}"}"; do echo "- $note"; done
    echo "- Whole run: $(($(date +%s) - START)) s. Full output: steps.log."
} >>"$MD"
cat "$MD"
echo "results in $OUT; $FAILED step(s) failed or timed out"
[[ $FAILED == 0 ]]
