# Sourced by the scripts that run on the GPU machine (device_all.sh, device_runtime.sh,
# device_full_models.sh, device_sink.sh, device_prefill.sh): what they each did by hand.

# cuBLAS is linked dynamically (libcublasLt is 540 MB, too large to carry): put the carried
# libraries in $1 (PCRE2, libgomp) and the machine's own libcublas.so.13 (CUDA toolkit or
# PyTorch's wheel) on LD_LIBRARY_PATH.
device_library_path() {
  local dirs="$1" f
  for f in $(find / -xdev -name 'libcublas.so.13*' 2>/dev/null | head -4); do dirs="$dirs:$(dirname "$f")"; done
  export LD_LIBRARY_PATH="$dirs:${LD_LIBRARY_PATH:-}"
}

# Unpacks an xz file with Python's lzma (the machine has no xz): unxz_py SRC.xz DST.
unxz_py() {
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$1" "$2"
}
