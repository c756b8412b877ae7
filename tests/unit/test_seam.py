"""The one seam to ComfyUI (nodes/comfy_seam.py): no other node file reaches into ComfyUI's internals itself.

Read with ``ast`` (no ComfyUI needed): an attribute or a subscript key from the list below anywhere in a node file
other than the seam is a reach around it. The seam itself must contain such reaches, or this test checks nothing."""

import ast
from pathlib import Path

import pytest

NODES = Path(__file__).resolve().parents[2] / "nodes"
SEAM = NODES / "comfy_seam.py"
INTERNALS = {
    "inner_model", "model_patcher", "model_sampling", "model_options", "get_model_object", "add_object_patch",
    "set_model_sampler_cfg_function", "set_model_sampler_post_cfg_function", "set_model_sampler_pre_cfg_function",
    "set_model_unet_function_wrapper", "add_wrapper", "calc_cond_batch", "sampling_function", "calculate_sigmas",
    "diffusion_model", "process_latent_in", "process_latent_out", "inverse_noise_scaling", "percent_to_sigma",
    "model_config", "CFGGuider",
}
"""Names of ComfyUI's internals: the wrapped model, sampling objects, options, patches, guider internals."""


def reaches(path: Path) -> list[str]:
    """``line: name`` of every attribute access and string subscript in ``path`` that names an internal."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in INTERNALS:
            found.append(f"{node.lineno}: .{node.attr}")
        elif (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
              and node.slice.value in INTERNALS):
            found.append(f"{node.lineno}: [{node.slice.value!r}]")
    return found


@pytest.mark.parametrize("path", sorted(p for p in NODES.glob("*.py") if p != SEAM), ids=lambda p: p.name)
def test_node_files_reach_comfyui_only_through_the_seam(path):
    assert reaches(path) == [], f"{path.name} reaches into ComfyUI; move it to nodes/comfy_seam.py"


def test_the_seam_is_where_the_reaches_are():
    assert len(reaches(SEAM)) >= 10


HOST_CALLED = {"predict_noise", "sample", "outer_sample", "inner_sample"}
"""Guider methods the host calls; it may pass keyword arguments that a newer ComfyUI adds."""


def host_called_functions(path: Path) -> list[ast.FunctionDef]:
    """Every k-diffusion sampler function ``(model, x, sigmas, ...)`` (what KSAMPLER calls) and every guider override
    in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ClassDef):
            found += [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name in HOST_CALLED]
        elif isinstance(node, ast.FunctionDef) and [a.arg for a in node.args.args[1:6]] == [
                "x", "sigmas", "extra_args", "callback", "disable"]:
            found.append(node)
    return found


def test_every_function_the_host_calls_accepts_keyword_arguments_of_newer_hosts():
    functions = [(path.name, f) for path in sorted(NODES.glob("*.py")) for f in host_called_functions(path)]
    assert len(functions) >= 8  # the seven sampler functions and MixingGuider's overrides
    closed = [f"{name}:{f.lineno} {f.name}" for name, f in functions if f.args.kwarg is None]
    assert closed == [], "these refuse a keyword argument a newer ComfyUI may pass; add **_"


PACK = NODES.parent
HOST_MODULES = ("comfy", "latent_preview", "folder_paths", "node_helpers")
"""Top-level modules of the host: ``comfy`` and every ``comfy_*`` package (comfy_api, comfy_extras, …), and the
host's loose modules."""
MAY_IMPORT_THE_HOST = {NODES / "comfy_seam.py", NODES / "registry.py", NODES / "types.py"}


def host_imports(source: str) -> list[str]:
    """``line: module`` of every import of a host module in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
        found += [f"{node.lineno}: {name}" for name in names
                  if name.split(".")[0].startswith("comfy") or name.split(".")[0] in HOST_MODULES]
    return found


PACK_FILES = sorted([PACK / "__init__.py", *(p for room in ("nodes", "samplers", "plots") for p in (PACK / room).glob("*.py"))])


def test_the_import_check_sees_each_kind_of_host_import():
    source = "import comfy.samplers\nfrom comfy_api.latest import io\nimport latent_preview\nfrom folder_paths import x\n"
    assert len(host_imports(source)) == 4
    assert host_imports("import torch\nfrom .comfy_seam import io\nimport comfortable\n") == []


@pytest.mark.parametrize("path", [p for p in PACK_FILES if p not in MAY_IMPORT_THE_HOST],
                         ids=lambda p: str(p.relative_to(PACK)))
def test_only_the_seam_imports_the_host(path):
    assert host_imports(path.read_text()) == [], f"{path.relative_to(PACK)} imports ComfyUI; go through nodes/comfy_seam.py"
