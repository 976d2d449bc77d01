"""Small helpers the package, its apps and the benchmarks share: the machine's name, median
timing, CSV writing, stable hashing and atomic writes of files and folders."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path


def machine_name() -> str:
    """A short file-name-safe name: the GPU's, else the CPU model and core count."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or "cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1]
                    break
        except OSError:
            pass
        name = f"{name}-{os.cpu_count()}cores"
    return re.sub(r"[^A-Za-z0-9]+", "-", name.strip()).strip("-").lower()


def median_ms(fn: Callable[[], object], setup: Callable[[], object], reps: int) -> float:
    """Median wall time of fn() in milliseconds over ``reps`` runs after one warm-up run,
    setup() (untimed) before each. On a GPU the runs are timed with CUDA events."""
    import torch

    setup()
    fn()
    times = []
    cuda = torch.cuda.is_available()
    for _ in range(reps):
        setup()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of equal keys as a CSV file (the first row's keys are the header)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def unit_hash(text: str, salt: str) -> float:
    """A number in [0, 1) from SHA-256 of salt and text: the same on every machine and run."""
    digest = hashlib.sha256(f"{salt}\0{text}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def read_versioned_json(path: Path, kind: str, fmt: str, version: int, how_to_make: str) -> dict:
    """A JSON record of format ``fmt`` version ``version`` at ``path``; a FileNotFoundError that
    says how to make one (``kind``: what the folder is) or a ValueError for another format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is not a {kind} (no {path.name}); {how_to_make}")
    record = json.loads(path.read_text())
    if record.get("format") != fmt or record.get("format_version") != version:
        raise ValueError(f"{path} is not a {fmt} v{version} file")
    return record


def _temporary_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def plain_file_mode(folder: Path) -> int:
    """The mode a plain open() gives a new file in ``folder`` (0666 less the umask), found by
    creating one: reading the umask with os.umask would set it, for every thread of the process."""
    probe = _temporary_beside(Path(folder) / "mode")
    probe.touch()
    try:
        return probe.stat().st_mode & 0o777
    finally:
        probe.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp_path) beside ``path``, then rename over it: readers never see half a file.

    The file gets the mode a plain open() would give (safetensors writes 0600 files), so shared
    data and checkpoint folders stay readable by others.
    """
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        tmp.touch()
        mode = tmp.stat().st_mode & 0o777
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def match_plain_mode(folder: Path) -> None:
    """Give every file in ``folder`` the mode a plain open() gets (savers such as safetensors
    write 0600 files), so a shared cache stays readable."""
    folder = Path(folder)
    mode = plain_file_mode(folder)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(mode)


def install_folder(tmp: Path, target: Path, is_complete: Callable[[Path], bool]) -> None:
    """Move a finished folder into place with one rename, so readers never see half of it.

    A stale or foreign folder at ``target`` is moved aside (atomic) and deleted first; if another
    writer wins the race, its folder is accepted only when ``is_complete`` says so.
    """
    tmp, target = Path(tmp), Path(target)
    if target.exists():
        if is_complete(target):  # another process finished first
            return
        stale = target.parent / f".{target.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not is_complete(target):
            raise
