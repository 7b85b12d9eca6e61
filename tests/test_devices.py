"""GPU planning and worker binding, on a CPU machine: NVML and torch.cuda are faked at their
boundary (the functions that query the driver); everything above them is the real code."""

import subprocess
import sys
import types

import pytest
import torch

from cnnopt import devices
from cnnopt.errors import DeviceError
from cnnopt.train import resolve_device, use_device

GIB = 1 << 30


class FakeNVML(types.ModuleType):
    """pynvml with ``free`` bytes per GPU (PCI order), and UUIDs GPU-0, GPU-1, ..."""

    class NVMLError(Exception):
        pass

    def __init__(self, free: list[int] | None):
        super().__init__("pynvml")
        self.free, self.shutdowns = free, 0

    def nvmlInit(self):
        if self.free is None:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.free)

    def nvmlDeviceGetHandleByIndex(self, i):
        if i >= len(self.free):
            raise self.NVMLError("Invalid Argument")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return int(uuid.removeprefix("GPU-"))

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-{handle}"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(free=self.free[handle], total=80 * GIB)


@pytest.fixture
def gpus(monkeypatch):
    """Install a fake machine: ``gpus(free_list_or_None, cuda_count)``. The parent process must
    never create a CUDA context: mem_get_info (which does) fails the test if called."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)

    def context_in_parent(*a, **k):
        raise AssertionError("torch.cuda.mem_get_info in the runner: a CUDA context per GPU")

    monkeypatch.setattr(torch.cuda, "mem_get_info", context_in_parent)

    def install(free, cuda_count=None):
        nvml = FakeNVML(free)
        monkeypatch.setitem(__import__("sys").modules, "pynvml", nvml)
        n = cuda_count if cuda_count is not None else len(free or [])
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(devices, "gpu_driver_present", lambda: n > 0)
        return nvml

    return install


def test_plan_spreads_workers_most_free_memory_first_through_nvml(gpus):
    nvml = gpus([2 * GIB, 30 * GIB, 10 * GIB])
    assert devices.plan_devices("cuda", 4) == ["cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert devices.plan_devices("auto", 2) == ["cuda:1", "cuda:2"]
    assert devices.plan_devices("cuda:2,0", 3) == ["cuda:2", "cuda:0", "cuda:2"]
    assert devices.plan_devices("cpu", 2) == ["cpu", "cpu"]
    assert nvml.shutdowns >= 3  # every NVML session is closed again


def test_plan_honours_cuda_visible_devices(gpus, monkeypatch):
    gpus([1 * GIB, 9 * GIB, 5 * GIB, 7 * GIB])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-0,3,2")  # cuda:0..2 = GPUs 0, 3, 2
    assert devices.plan_devices("cuda", 3) == ["cuda:1", "cuda:2", "cuda:0"]
    with pytest.raises(DeviceError, match="no cuda:3 on this machine, which has 3 GPUs"):
        devices.plan_devices("cuda:3", 1)


def test_plan_without_nvml_measures_in_a_child_process(gpus, monkeypatch):
    gpus(None, cuda_count=2)
    monkeypatch.setattr(devices, "_child_free", lambda: [1 * GIB, 5 * GIB])
    assert devices.plan_devices("cuda", 3) == ["cuda:1", "cuda:0", "cuda:1"]
    # one GPU: nothing to sort, no child process
    gpus(None, cuda_count=1)
    monkeypatch.setattr(devices, "_child_free", lambda: pytest.fail("measured for nothing"))
    assert devices.plan_devices("cuda", 2) == ["cuda:0", "cuda:0"]


def test_the_child_process_measures_for_real():
    # a real child process on this machine: CUDA there sees no GPU, and its answer comes back
    assert devices._child_free() == [0] * torch.cuda.device_count()


def test_missing_gpus_are_one_line_errors(gpus):
    gpus([8 * GIB, 8 * GIB])
    with pytest.raises(
        DeviceError, match=r"--device cuda:9: no cuda:9 .* 2 GPUs \(cuda:0 to cuda:1\)"
    ):
        devices.plan_devices("cuda:9", 1)
    with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:0,1"):
        devices.plan_devices("cuda:x", 1)
    with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:0,1"):
        devices.plan_devices("gpu", 1)
    gpus(None, cuda_count=0)
    assert devices.plan_devices("auto", 2) == ["cpu", "cpu"]
    with pytest.raises(DeviceError, match="--device cuda: no CUDA GPU on this machine"):
        devices.plan_devices("cuda", 1)


def test_a_worker_sees_only_its_own_gpu():
    assert devices.worker_env("cpu", {}) == {}
    assert devices.worker_env("cuda:3", {}) == {
        "CUDA_VISIBLE_DEVICES": "3",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    # numbered among the visible GPUs, as the runner planned them
    env = devices.worker_env("cuda:1", {"CUDA_VISIBLE_DEVICES": "4,GPU-abc,6"})
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-abc"


def test_a_worker_gets_its_gpu_by_uuid_from_nvml(gpus, monkeypatch):
    """NVML's index (PCI order) becomes the GPU's UUID: CUDA's own list skips MIG-enabled and
    unsupported GPUs, so the same number could name another GPU there."""
    gpus([GIB] * 8)
    assert devices.worker_env("cuda:3", {})["CUDA_VISIBLE_DEVICES"] == "GPU-3"
    visible = {"CUDA_VISIBLE_DEVICES": "4,GPU-abc,MIG-7f3e/1/0"}
    assert devices.worker_env("cuda:0", visible)["CUDA_VISIBLE_DEVICES"] == "GPU-4"
    assert devices.worker_env("cuda:1", visible)["CUDA_VISIBLE_DEVICES"] == "GPU-abc"
    assert devices.worker_env("cuda:2", visible)["CUDA_VISIBLE_DEVICES"] == "MIG-7f3e/1/0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6,7")
    assert devices.bind_worker("cuda:2") == "cuda:0"
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-7"
    # CUDA's own order (not NVML's): the runner numbered with CUDA, the number stands
    env = devices.worker_env("cuda:1", {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})
    assert env == {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    gpus(None)  # no NVML: the runner counted with CUDA in PCI order, the number stands
    assert devices.worker_env("cuda:3", {})["CUDA_VISIBLE_DEVICES"] == "3"


def test_bind_worker_sets_the_environment_before_cuda_starts(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6,7")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert devices.bind_worker("cpu") == "cpu"
    assert devices.bind_worker("cuda:2") == "cuda:0"
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="before CUDA is initialised"):
        devices.bind_worker("cuda:0")


def test_cnnopt_train_device_is_checked_and_made_current(gpus, monkeypatch):
    gpus([8 * GIB, 8 * GIB])
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert use_device("cuda:1") == torch.device("cuda:1")
    assert current == [torch.device("cuda:1")]  # the current device: nothing lands on GPU 0
    assert use_device("cpu") == torch.device("cpu") and len(current) == 1
    with pytest.raises(DeviceError, match="no cuda:9 on this machine, which has 2 GPUs"):
        use_device("cuda:9")


def test_cuda_on_a_machine_without_gpu_is_a_device_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError, match="--device cuda:0: no CUDA GPU on this machine"):
        resolve_device("cuda:0")


def test_a_worker_binds_its_gpu_before_it_loads_anything(monkeypatch):
    import os

    from cnnopt import worker
    from cnnopt.errors import StudyFileError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    seen = {}

    def load(path, overrides):  # the worker's first use of the study file
        seen["visible"] = os.environ["CUDA_VISIBLE_DEVICES"]
        raise StudyFileError("stop here")

    monkeypatch.setattr(worker.Study, "load", load)
    spec = worker.WorkerSpec(index=0, device="cuda:2", threads=1)
    with pytest.raises(StudyFileError):
        worker._work(spec, "x.py", {}, "unused", None, 1, None, None, None, None)
    assert seen["visible"] == "2"


def test_auto_on_a_machine_without_a_gpu_driver_does_not_import_torch(monkeypatch):
    """No driver node (/dev/nvidia*, /dev/kfd, /dev/dxg): no GPU, decided without torch."""
    monkeypatch.setattr(devices, "_DRIVER_GLOBS", ("/nonexistent/nvidia*",))
    assert not devices.gpu_driver_present()
    code = (
        "import sys; from cnnopt import devices; devices._DRIVER_GLOBS = ('/nonexistent/x*',);"
        "print(devices.plan_devices('auto', 2), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['cpu',", "'cpu']", "False"]
