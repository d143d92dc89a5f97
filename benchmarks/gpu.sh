#!/usr/bin/env bash
# GPU benchmark: BERT-base (12 x 768) pretraining in bf16 on one GPU -- pieces/s, achieved TFLOP/s
# and its share of the matrix-product limit -- plus bert_encoder inference words/s, in under 8 minutes.
#
# What it needs: a Linux x86-64 machine with one CUDA GPU, and a Python there with a CUDA build of
# torch (plus tokenizers and safetensors). A GPU machine without network gets the rest (spaCy and
# its dependencies, as wheels, and the IMDB text) from `prepare`, run beforehand on a machine with
# PyPI and ../shared/data/imdb; copy the repository with benchmarks/.cache/gpu (git-ignored) there:
#
#   bash benchmarks/gpu.sh prepare                 # with network: wheels + text -> benchmarks/.cache/gpu
#   bash benchmarks/gpu.sh                         # on the GPU machine; results in $OUT (else benchmarks/results/gpu)
#   bash benchmarks/gpu.sh --device cpu --tiny     # anywhere: CPU smoke test of every stage
#
# Extra arguments go to benchmarks/gpu.py (see its --help), e.g. --skip compile,hf --batch-tokens 65536.
# Environment: PYTHON (default python3), GPU_PYTHON_VERSION (prepare: the GPU machine's Python,
# default 3.12), GPU_BENCH_TIMEOUT (seconds for gpu.py, default 450; gpu.py's own budget is --budget-s 420).
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_CACHE=benchmarks/.cache/gpu
PY=${PYTHON:-python3}
# spaCy and its dependencies: what a Python with torch, tokenizers and safetensors lacks.
PACKAGES=(spacy thinc blis cymem preshed murmurhash srsly wasabi catalogue confection weasel cloudpathlib
          smart-open spacy-legacy spacy-loggers pydantic pydantic-core typing-inspection annotated-types)

prepare() {
    local pyver=${GPU_PYTHON_VERSION:-3.12}
    local tag="cp${pyver/./}"
    local pip_py=$PY
    [ -x .venv/bin/python ] && pip_py=.venv/bin/python
    mkdir -p "$GPU_CACHE"
    local specs=()
    for name in "${PACKAGES[@]}"; do  # the versions installed here, so both machines run the same code
        version=$("$pip_py" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$name")
        specs+=("$name${version:+==$version}")
    done
    local site
    site=$(mktemp -d)
    echo "downloading ${specs[*]} for Python $pyver (manylinux x86_64) ..."
    "$pip_py" -m pip install -q --no-deps --no-compile --only-binary=:all: --target "$site" \
        --python-version "$pyver" --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "${specs[@]}"
    # Debug symbols and test suites are most of the size (about 190 MB -> 70 MB, 13 MB as .tar.xz).
    if command -v strip >/dev/null; then find "$site" -name '*.so' -exec strip --strip-debug {} +; fi
    find "$site" -maxdepth 2 -type d -name tests -prune -exec rm -rf {} +
    find "$site" -type d -name __pycache__ -prune -exec rm -rf {} +
    tar -C "$site" -cJf "$GPU_CACHE/site-$tag.tar.xz" .
    rm -rf "$site"
    local imdb=../shared/data/imdb/train.jsonl.gz
    if [ -f "$imdb" ]; then
        install -m 644 "$imdb" "$GPU_CACHE/imdb-train.jsonl.gz"
    else
        echo "note: $imdb not found; gpu.py will fall back to the repo's own text (small)"
    fi
    du -sh "$GPU_CACHE"/*
    echo "prepared $GPU_CACHE: copy the repository with it to the GPU machine and run bash benchmarks/gpu.sh there"
}

run() {
    local tag
    tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    if [ -f "$GPU_CACHE/site-$tag.tar.xz" ]; then
        local site=${TMPDIR:-/tmp}/spacy-bert-bench-site
        rm -rf "$site" && mkdir -p "$site"
        tar -C "$site" -xJf "$GPU_CACHE/site-$tag.tar.xz"
        export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "note: no $GPU_CACHE/site-$tag.tar.xz; using the packages $PY already has"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if ! "$PY" -c 'import spacy, thinc, torch, tokenizers, safetensors; print("spacy", spacy.__version__, "from", spacy.__file__, "| torch", torch.__version__)'; then
        echo "spaCy (or torch) cannot be imported: run 'bash benchmarks/gpu.sh prepare' where PyPI is reachable and carry $GPU_CACHE" >&2
        exit 2
    fi
    local out=${OUT:-benchmarks/results/gpu}
    mkdir -p "$out"
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; fi
    export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
    timeout "${GPU_BENCH_TIMEOUT:-450}" "$PY" benchmarks/gpu.py --out "$out" "$@" 2>&1 | tee "$out/gpu.log"
}

case "${1:-}" in
    prepare) prepare ;;
    -h|--help) sed -n '2,16p' "$0" ;;
    *) run "$@" ;;
esac
