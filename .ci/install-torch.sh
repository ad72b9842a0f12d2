#!/bin/sh
# Install torch before the project so that pip never resolves the multi-GB CUDA build on a
# machine without a GPU. Order of preference:
#   1. TORCH_INDEX, when set (e.g. a CUDA index on a GPU cluster);
#   2. a CPU wheel pip finds without an index (a local wheel folder or cache);
#   3. no NVIDIA GPU: PyTorch's CPU index (TORCH_CPU_INDEX);
#   4. an NVIDIA GPU: the default index (CUDA build).
set -eu
PIP=${PIP:-python3 -m pip}
SPEC="torch==${TORCH_VERSION:?}"
if $PIP show torch >/dev/null 2>&1; then
    echo "torch already installed: $($PIP show torch | sed -n 's/^Version: //p')"
    exit 0
fi
if [ -n "${TORCH_INDEX:-}" ]; then
    exec $PIP install --quiet --index-url "$TORCH_INDEX" "$SPEC"
fi
if $PIP install --quiet --no-index --no-deps "$SPEC" 2>/dev/null; then
    $PIP install --quiet "$SPEC"  # torch's own dependencies, from the package index
    echo "torch: installed $SPEC from a local wheel"
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    exec $PIP install --quiet "$SPEC"
fi
exec $PIP install --quiet --index-url "${TORCH_CPU_INDEX:?}" "$SPEC"
