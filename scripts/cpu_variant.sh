#!/usr/bin/env bash
# Run a command as if on another CPU: another choice of floating-point kernels and one thread.
#
#   bash scripts/cpu_variant.sh COMMAND [ARG...]
#
# Machines differ: oneDNN picks convolution kernels per CPU (AVX-512, AVX2, SSE4.1, ...) and the
# thread count changes the order of sums, so the last digits of a result differ from machine to
# machine. The test command runs the lessons twice, as the machine comes and under this script,
# so that no stored output depends on the CPU that recorded it.
# On an AVX-512 CPU: AVX2 kernels, in oneDNN and in PyTorch's own (ATen) kernels.
# Otherwise: SSE4.1 kernels in oneDNN (ignored on CPUs that are not x86).
set -euo pipefail
PYTHON=${PYTHON:-"$(dirname "$0")/../.venv/bin/python"}
capability=$("$PYTHON" -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
if [ "$capability" = AVX512 ]; then
    export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
else
    export ONEDNN_MAX_CPU_ISA=SSE41
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "cpu_variant: this CPU is $capability; running with ONEDNN_MAX_CPU_ISA=$ONEDNN_MAX_CPU_ISA" \
     "ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-(unchanged)} OMP_NUM_THREADS=1" >&2
exec "$@"
