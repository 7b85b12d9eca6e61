"""Which GPU each worker trains on, decided without a CUDA context in the runner process.

A CUDA context costs a few hundred MiB on its GPU for as long as its process lives, so the runner
(which only watches its workers) must never create one. It counts the GPUs and measures their free
memory through NVML (``nvidia-ml-py``: the driver's management library, no context), or, where
NVML is missing, in a short child process whose context dies with it.

GPUs are numbered as nvidia-smi numbers them (PCI bus order, ``CUDA_DEVICE_ORDER=PCI_BUS_ID``),
among those ``CUDA_VISIBLE_DEVICES`` leaves visible: ``--device cuda:1`` is the second of those.

Each worker then sees only its own GPU: ``bind_worker`` sets ``CUDA_VISIBLE_DEVICES`` to that one
GPU (by UUID, see ``worker_env``) before the worker's torch initialises CUDA, so in the worker it is ``cuda:0`` and the current
device, and nothing in the worker (the bf16 query, the DataLoader's pin-memory thread, seeding,
``empty_cache``) can reach, or create a context on, another GPU.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from collections.abc import Mapping

from cnnopt.errors import DeviceError

ORDER = "PCI_BUS_ID"  # NVML's (and nvidia-smi's) numbering; CUDA's default orders fastest first


def visible_devices(environ: Mapping[str, str] = os.environ) -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES`` CUDA honours (up to the first invalid one), or
    None when it is not set (every GPU visible)."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    out = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry or entry.startswith("-"):
            break  # CUDA ignores everything from the first invalid entry on ("-1": none)
        out.append(entry)
    return out


def _nvml_free(environ: Mapping[str, str] = os.environ) -> list[int] | None:
    """Free bytes of each visible GPU (index = its cuda:N), from NVML; None where NVML cannot say
    (no library or driver, MIG entries in CUDA_VISIBLE_DEVICES, another device order)."""
    if environ.get("CUDA_DEVICE_ORDER", ORDER) != ORDER:
        return None  # NVML numbers by PCI bus: only the child process knows CUDA's own order
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound / DriverNotLoaded
        return None
    try:
        visible = visible_devices(environ)
        if visible is None:
            handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        else:
            handles = []
            for entry in visible:
                if entry.isdigit():
                    handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(entry)))
                elif entry.startswith("GPU-"):
                    handles.append(pynvml.nvmlDeviceGetHandleByUUID(entry))
                else:
                    return None  # MIG-... : let CUDA itself answer
        return [int(pynvml.nvmlDeviceGetMemoryInfo(h).free) for h in handles]
    except pynvml.NVMLError:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


_PROBE = (
    "import json, torch; "
    "print(json.dumps([torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]))"
)


def _child_free() -> list[int]:
    """Free bytes per visible GPU, measured by CUDA in a child process (its context dies with it)."""
    env = {**os.environ, "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER", ORDER)}
    r = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, env=env
    )
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeviceError(f"cannot measure the GPUs' free memory: {last}")
    return [int(b) for b in json.loads(r.stdout.strip().splitlines()[-1])]


# Where a GPU driver shows itself: NVIDIA's device nodes and proc entry, ROCm's kernel driver,
# WSL2's GPU paravirtualisation. None of them: no GPU, and no need to import torch (seconds of
# a runner's start on a CPU machine) to ask CUDA.
_DRIVER_GLOBS = ("/dev/nvidia*", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def gpu_driver_present() -> bool:
    return any(glob.glob(pattern) for pattern in _DRIVER_GLOBS)


def gpu_count() -> int:
    """How many GPUs CUDA will show this process's children (no context is created)."""
    free = _nvml_free()
    if free is not None:
        return len(free)
    if not gpu_driver_present():
        return 0
    import torch  # cudaGetDeviceCount initialises the driver, but creates no context

    return torch.cuda.device_count()


def gpu_free_memory() -> list[int]:
    """Free bytes of each visible GPU, indexed as ``cuda:N``: NVML, else a child process."""
    free = _nvml_free()
    return free if free is not None else _child_free()


def parse_device(spec: str) -> list[int] | None:
    """The GPU numbers of ``cuda:0,1`` ([0, 1]); None for plain ``cuda`` (all of them)."""
    if spec == "cuda":
        return None
    head, _, tail = spec.partition(":")
    try:
        ids = [int(i) for i in tail.split(",")] if head == "cuda" and tail else []
    except ValueError:
        ids = []
    if not ids or min(ids) < 0:
        raise DeviceError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:0,1")
    return ids


def check_gpus(spec: str, ids: list[int] | None, count: int) -> None:
    """One line, before anything starts, when ``spec`` asks for GPUs this machine lacks."""
    if count == 0:
        raise DeviceError(f"--device {spec}: no CUDA GPU on this machine")
    missing = [i for i in ids or [] if i >= count]
    if missing:
        have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise DeviceError(
            f"--device {spec}: no cuda:{missing[0]} on this machine, which has {count} "
            f"GPU{'s' if count > 1 else ''} ({have})"
        )


def plan_devices(spec: str, n_workers: int) -> list[str]:
    """One device per worker. ``cuda`` spreads workers over all GPUs, most free memory first;
    ``cuda:0,1`` over the listed ones; several workers may share a GPU. ``auto`` is ``cuda``
    where there is a GPU, else ``cpu``. Raises DeviceError for GPUs that are not there."""
    if spec == "auto":
        spec = "cuda" if gpu_count() else "cpu"
    if spec == "cpu":
        return ["cpu"] * n_workers
    ids = parse_device(spec)
    free = _nvml_free()
    count = len(free) if free is not None else gpu_count()
    check_gpus(spec, ids, count)
    if ids is None:
        ids = list(range(count))
        if count > 1:
            free = free if free is not None else _child_free()
            ids.sort(key=lambda i: -free[i])
    return [f"cuda:{ids[i % len(ids)]}" for i in range(n_workers)]


def _nvml_uuids(entries: list[str]) -> list[str] | None:
    """NVML indices (PCI bus order) -> the GPUs' UUIDs; other entries (UUIDs, MIG-...) as they
    are. None where NVML cannot say."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound / DriverNotLoaded
        return None
    try:
        out = []
        for entry in entries:
            if entry.isdigit():
                uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(int(entry)))
                out.append(uuid.decode() if isinstance(uuid, bytes) else str(uuid))
            else:
                out.append(entry)
        return out
    except pynvml.NVMLError:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def worker_env(device: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment that shows a worker placed on ``device`` (the runner's ``cuda:N``) only
    that GPU; empty for a CPU worker.

    The GPU is named by its UUID (from NVML) rather than by a number: CUDA numbers only the GPUs
    it supports, and with MIG or a GPU CUDA cannot use (too old for this CUDA, or in a bad
    state) its list is shorter than NVML's, so an NVML index written into
    ``CUDA_VISIBLE_DEVICES`` can name another GPU, or none. A UUID names one GPU in both. Without
    NVML the runner numbered the GPUs with CUDA itself, and that number is passed on."""
    if not device.startswith("cuda"):
        return {}
    index = int(device.partition(":")[2] or 0)
    visible = visible_devices(environ)
    entry = visible[index] if visible is not None else str(index)
    order = environ.get("CUDA_DEVICE_ORDER", ORDER)
    if entry.isdigit() and order == ORDER:  # an NVML index (PCI order): its UUID, where known
        uuids = _nvml_uuids([entry])
        if uuids is not None:
            entry = uuids[0]
    return {"CUDA_VISIBLE_DEVICES": entry, "CUDA_DEVICE_ORDER": order}


def bind_worker(device: str) -> str:
    """First thing in a worker process: make ``device`` the only GPU it can see. Returns the
    device as the worker's torch names it (``cuda:0``, which is then also the current device)."""
    env = worker_env(device)
    if not env:
        return device
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # too late: CUDA read the old value
        raise RuntimeError("bind_worker must run before CUDA is initialised in the worker")
    os.environ.update(env)
    return "cuda:0"
