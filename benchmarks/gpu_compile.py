"""Every Triton kernel the public ops launch, compiled for NVIDIA GPUs on a machine without one.

    python -m benchmarks.gpu_compile                  # sm_80, sm_90, sm_100: table + CSV
    python -m benchmarks.gpu_compile --arch 90 --quick

The Triton interpreter, which the test suite runs on the CPU, accepts code that Triton's
compiler refuses; this runs the compiler itself. The public ops are called at serving shapes on
``meta`` tensors (shapes and dtypes, no data: the torch work around the kernels costs nothing)
with the triton backend, while a compile-only driver stands in for the GPU: it reports the
target (GPUTarget("cuda", arch, 32)) and the device's multiprocessor count, and every kernel
launch becomes ``warmup=True``, so Triton's real pipeline runs (specialisation, TTIR, TTGIR,
LLVM IR, PTX, and a cubin from the ptxas shipped in the Triton wheel) and nothing launches.
``ptxas -v`` on each PTX gives registers and spills; the PTX shows whether tensor-core
instructions (mma.sync, wgmma, tcgen05) are used.

Fails (exit 1) when a kernel does not compile for a target or spills more than SPILL_BOUND
bytes. Writes benchmarks/results/gpu_compile_triton-<version>.csv. `make gpu-compile` runs it
under the CPU venv's Triton and under the Triton that vLLM 0.32's GPU install pins (3.7.1).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import re
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction

RESULTS = Path(__file__).parent / "results"

# arch -> (GPU it stands for, its multiprocessor count: the launchers size grids by it)
TARGETS = {80: ("A100", 108), 90: ("H100", 132), 100: ("B200", 148)}
# Bytes of spill stores per thread a kernel may have (ptxas -v). ptxas leaves a few 4-16 byte
# spills in some row kernels at some specialisations (a 64-bit index kept across a loop); a
# tile that does not fit its registers spills hundreds to thousands.
SPILL_BOUND = 32
TENSOR_CORE_OPS = ("wgmma.mma_async", "mma.sync", "tcgen05.mma")

BATCHES = (1, 7, 256)
VOCABS = (32001, 49152, 151936)
SLED_HIDDEN = (576, 4096)
SLED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SLED_KS = (1, 10, 300)
SLED_LAYERS = 4


class CompileOnlyDriver:
    """The parts of Triton's CUDA driver that compiling needs, for a GPU that is not there."""

    def __init__(self, arch: int, multiprocessors: int):
        self.target = GPUTarget("cuda", arch, 32)
        props = {"multiprocessor_count": multiprocessors, "max_shared_mem": 232448, "warpSize": 32}
        self.utils = SimpleNamespace(get_device_properties=lambda device: props)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        # Triton caches compiled kernels per device id: one id per target keeps them apart.
        return self.target.arch

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self):
        return torch.device("meta")


@contextlib.contextmanager
def compile_only(arch: int):
    """Launches compile for ``arch`` and return; yields the list of compiled kernels."""
    compiled = []
    original_run = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.__name__, kernel))
        return kernel

    drivers = triton.runtime.driver
    saved = drivers._active  # not drivers.active: that would look for a GPU
    drivers.set_active(CompileOnlyDriver(arch, TARGETS[arch][1]))
    JITFunction.run = run
    try:
        yield compiled
    finally:
        JITFunction.run = original_run
        drivers._active = saved


def scenarios(quick: bool):
    """(name, shape description, fn) for every public-op call to compile, on meta tensors."""
    import real_vllm.ops as ops

    meta = dict(device="meta")
    batches, vocabs = ((7,), (32001,)) if quick else (BATCHES, VOCABS)
    for b, v in itertools.product(batches, vocabs):
        x = lambda: torch.empty(b, v, dtype=torch.float32, **meta)  # noqa: E731
        shape = f"B={b} V={v}"
        yield "entropy", shape, lambda: ops.entropy(x(), backend="triton")
        yield "edt_temperature", shape, lambda: ops.edt_temperature(x(), 1.0, 0.8, 1.0, backend="triton")
        yield "apply_temperature", shape, lambda: ops.apply_temperature(x(), 0.7, inplace=True, backend="triton")
        yield "apply_edt", shape, lambda: ops.apply_edt(x(), 1.0, 0.8, 1.0, inplace=True, backend="triton")
        yield "top_p_mask", shape, lambda: ops.top_p_mask(x(), 0.9, inplace=True, backend="triton")
        for k in (SLED_KS[1:2] if quick else SLED_KS):
            early = lambda: torch.empty(SLED_LAYERS, b, v, dtype=torch.float32, **meta)  # noqa: E731
            yield ("sled_evolve", f"{shape} L={SLED_LAYERS} k={k}",
                   lambda: ops.sled_evolve(x(), early(), 2.0, k, inplace=True, backend="triton"))
            for hidden, dtype in itertools.product(SLED_HIDDEN[:1] if quick else SLED_HIDDEN,
                                                   SLED_DTYPES[1:2] if quick else SLED_DTYPES):
                h = lambda: torch.empty(SLED_LAYERS, b, hidden, dtype=dtype, **meta)  # noqa: E731
                w = lambda: torch.empty(v, hidden, dtype=dtype, **meta)  # noqa: E731
                yield ("sled_evolve_from_hidden", f"{shape} L={SLED_LAYERS} H={hidden} {str(dtype)[6:]} k={k}",
                       lambda: ops.sled_evolve_from_hidden(x(), h(), w(), 2.0, k, inplace=True, backend="triton"))


def ptxas_path(arch: int) -> str:
    """The ptxas Triton itself uses for ``arch`` (its wheel ships two: the PTX it writes for
    sm_90 needs the newer one in 3.9, the older one in 3.7)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def resource_usage(ptx: str, arch: int) -> dict:
    """Registers, spill bytes and shared memory from `ptxas -v` on the kernel's PTX."""
    gpu_name = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1).rstrip(",")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run([ptxas_path(arch), "-v", f"--gpu-name={gpu_name}", str(src),
                              "-o", str(Path(tmp) / "k.cubin")], capture_output=True, text=True, check=True)
    log = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    return {
        "registers": int(regs.group(1)) if regs else -1,
        "spill_stores": int(stores.group(1)) if stores else 0,
        "spill_loads": int(loads.group(1)) if loads else 0,
    }


def tensor_core_ops(ptx: str) -> str:
    found = [f"{op} x{ptx.count(op)}" for op in TENSOR_CORE_OPS if op in ptx]
    return ", ".join(found) or "none"


def compile_all(archs, quick: bool):
    """Rows of the table: one per (target, kernel variant), and the failures."""
    rows, failures = [], []
    for arch in archs:
        seen = {}
        for name, shape, fn in scenarios(quick):
            with compile_only(arch) as compiled:
                try:
                    fn()
                except Exception as e:  # a kernel the compiler refuses: record, go on
                    failures.append(f"sm_{arch} {name} {shape}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    traceback.print_exc(limit=2)
                    continue
            for kernel_name, kernel in compiled:
                key = (kernel_name, kernel.hash)
                if key in seen:
                    seen[key]["shapes"] += 1
                    continue
                ptx = kernel.asm["ptx"]
                usage = resource_usage(ptx, arch)
                row = {"target": f"sm_{arch} ({TARGETS[arch][0]})", "kernel": kernel_name, "op": name,
                       "first_shape": shape, "shapes": 1, "num_warps": kernel.metadata.num_warps,
                       "shared_bytes": kernel.metadata.shared, **usage,
                       "tensor_cores": tensor_core_ops(ptx), "cubin_bytes": len(kernel.asm["cubin"])}
                seen[key] = row
                rows.append(row)
                if usage["spill_stores"] > SPILL_BOUND:
                    failures.append(f"sm_{arch} {kernel_name} ({shape}): {usage['spill_stores']} bytes of "
                                    f"spill stores > {SPILL_BOUND}")
    return rows, failures


def summary(rows):
    """One line per (target, kernel): its variants' worst registers, spills and shared memory."""
    groups = {}
    for r in rows:
        groups.setdefault((r["target"], r["kernel"]), []).append(r)
    out = []
    for (target, kernel), rs in groups.items():
        out.append({"target": target, "kernel": kernel, "variants": len(rs),
                    "num_warps": "/".join(sorted({str(r["num_warps"]) for r in rs})),
                    "max_registers": max(r["registers"] for r in rs),
                    "max_spill_stores": max(r["spill_stores"] for r in rs),
                    "max_shared_bytes": max(r["shared_bytes"] for r in rs),
                    "tensor_cores": " / ".join(sorted({r["tensor_cores"].split(" x")[0] for r in rs}))})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=",".join(map(str, TARGETS)), help="comma-separated, e.g. 80,90")
    parser.add_argument("--quick", action="store_true", help="one shape per op (a smoke run)")
    parser.add_argument("--out", default=None, help="CSV path (default: results/gpu_compile_triton-<version>.csv)")
    args = parser.parse_args(argv)
    archs = [int(a) for a in args.arch.split(",")]
    rows, failures = compile_all(archs, args.quick)
    from real_vllm.utils import write_csv

    out = Path(args.out) if args.out else RESULTS / f"gpu_compile_triton-{triton.__version__}{'_quick' if args.quick else ''}.csv"
    write_csv(out, rows)
    table = summary(rows)
    print(f"Triton {triton.__version__}: {len(rows)} kernel variants compiled for "
          f"{', '.join(f'sm_{a}' for a in archs)} (every variant: {out})")
    cols = list(table[0]) if table else []
    widths = [max(len(c), *(len(str(r[c])) for r in table)) for c in cols]
    for line in [dict(zip(cols, cols))] + table:
        print("  ".join(str(line[c]).ljust(w) for c, w in zip(cols, widths)))
    if failures:
        print(f"\n{len(failures)} failure(s) (spill bound {SPILL_BOUND} bytes):")
        for f in failures:
            print("  " + f)
        return 1
    print(f"all compile; spills <= {SPILL_BOUND} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
