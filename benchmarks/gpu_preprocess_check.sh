#!/usr/bin/env bash
# One-shot check on a CUDA machine without network (no TensorRT needed): build pycuda from the sdist carried in
# .whl/, then compare the GPU preprocessing kernel with the CPU reference on real photos and time it.
#   .whl/: pycuda-*.tar.gz + wheels of pytools, platformdirs, mako, siphash24 (see benchmarks/README_gpu.md);
#   .whl/fallback/: an alternative pycuda wheel, used only if the sdist does not build.
# Results (JSON + logs) go to $OUT (default /tmp/okcell-gpu-check).
set -u
OUT=${OUT:-/tmp/okcell-gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
export PATH="$(dirname "$NVCC"):$PATH"
CUDA_ROOT=$(dirname "$(dirname "$(readlink -f "$NVCC")")")
nvcc --version | tail -2
python3 -c "import sys, sysconfig, os, numpy, cv2; inc = sysconfig.get_paths()['include']; print(sys.version.split()[0], 'Python.h', os.path.exists(inc + '/Python.h'), 'numpy', numpy.__version__, 'cv2', cv2.__version__)"

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
# okcell's package mapping without installing it: okcell/ plus export/ -> export, edge/ -> edge.
mkdir -p /tmp/pkg/okcell && cp okcell/*.py /tmp/pkg/okcell/
for part in export edge calibration; do ln -sfn "$PWD/$part" "/tmp/pkg/okcell/$part"; done
export PYTHONPATH=/tmp/pkg:/tmp/site

(
  tar xzf .whl/pycuda-*.tar.gz -C /tmp && cd /tmp/pycuda-* &&
  python3 configure.py --cuda-root="$CUDA_ROOT" --no-cuda-enable-curand &&
  timeout 300 python3 setup.py build_ext --inplace -j 16
) > "$OUT/pycuda_build.txt" 2>&1 &
BUILD=$!

echo "== CuPy RawModule (NVRTC) with the same KERNEL_SOURCE"
timeout 150 python3 benchmarks/gpu_preprocess.py --runtime cupy --iterations 100 --out "$OUT/cupy.json"

wait $BUILD
echo "pycuda build exit status $?"
tail -5 "$OUT/pycuda_build.txt"
PYCUDA_DIR=$(ls -d /tmp/pycuda-*/ 2>/dev/null | head -1)
if ! PYTHONPATH="$PYCUDA_DIR:$PYTHONPATH" python3 -c "import pycuda.driver"; then
  echo "pycuda sdist did not build; using the fallback wheel in .whl/fallback"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/pycuda-fallback .whl/fallback/*.whl
  PYCUDA_DIR=/tmp/pycuda-fallback
fi
export PYTHONPATH="$PYCUDA_DIR:$PYTHONPATH"
python3 -c "import pycuda, pycuda.driver as d; d.init(); print('pycuda', pycuda.VERSION_TEXT, pycuda.__file__, 'driver API', d.get_driver_version())"

echo "== pycuda: okcell GpuPreprocessor (page-locked staging, async upload, kernel)"
timeout 150 python3 benchmarks/gpu_preprocess.py --runtime pycuda --iterations 300 --out "$OUT/pycuda.json"
echo "== pytest: real-kernel and CUDA-graph tests (TensorRT tests skip: not installable here)"
python3 -c "from cuda.bindings import runtime; print('cuda-python runtime bindings', runtime.cudaRuntimeGetVersion())"
timeout 120 python3 -P -m pytest -q --noconftest -p no:cacheprovider -rs tests/test_gpu_preprocess.py tests/test_tensorrt_backend.py
