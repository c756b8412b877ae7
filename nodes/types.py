"""The pack's own IO types and the folders its artefacts live in.

Artefacts are safetensors files with JSON metadata in model folders registered with ``folder_paths`` (so users can add
paths in ``extra_model_paths.yaml``). A name a user gives is resolved inside those folders only: ``..``, absolute paths
and symlinks that lead outside are refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import folder_paths
from comfy_api.latest import io

VRG_PROFILE = io.Custom("VRG_PROFILE")
POLARIS_TRACE = io.Custom("POLARIS_TRACE")
NOISE_ESTIMATOR = io.Custom("NOISE_AWARENESS_ESTIMATOR")
"""The sockets of the pack's own types, named as the frontend shows them (the classes they carry live in ``samplers/``)."""
T = TypeVar("T")
PROFILE_FOLDER = "vrg_profiles"
TRACE_FOLDER = "polaris_traces"
ESTIMATOR_FOLDER = "noise_awareness_estimators"
FORMER_FOLDERS = {ESTIMATOR_FOLDER: ("nag_noise_estimators",)}
"""Folders a kind of artefact lived in under an earlier name: still read (their files listed and loaded), never written."""
EXTENSION = ".safetensors"


def register_folder(name: str) -> None:
    """A ``models/<name>`` folder for the pack's files, listed like any model folder (idempotent). Its former names
    (:data:`FORMER_FOLDERS`) are read too: ``models/<former>`` and any paths ``extra_model_paths.yaml`` gives them."""
    folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name), is_default=True)
    for former in FORMER_FOLDERS.get(name, ()):
        paths = [os.path.join(folder_paths.models_dir, former)]
        paths += folder_paths.folder_names_and_paths.get(former, ([], set()))[0]
        for path in paths:
            folder_paths.add_model_folder_path(name, path)
    folder_paths.folder_names_and_paths[name][1].add(EXTENSION)


def list_files(folder: str) -> list[str]:
    """The artefact names a combo offers."""
    return folder_paths.get_filename_list(folder)


def resolve(folder: str, name: str, node: str, input_name: str) -> Path:
    """The existing file ``name`` inside ``folder``; a ``ValueError`` naming the node and input otherwise."""
    path = folder_paths.get_full_path(folder, name)
    roots = [Path(root).resolve() for root in folder_paths.get_folder_paths(folder)]
    if path is None or not any(Path(path).resolve().is_relative_to(root) for root in roots):
        raise ValueError(f"{node}: input '{input_name}': no file {name!r} in models/{folder}. Pick one from the list, "
                         f"or create it with the node that writes {folder}.")
    return Path(path)


def load(folder: str, name: str, node: str, input_name: str, reader: Callable[[Path], T]) -> T:
    """``reader(path)`` of the file ``name`` in ``folder`` (:func:`resolve`); its ``ValueError`` names the node and input."""
    path = resolve(folder, name, node, input_name)
    try:
        return reader(path)
    except ValueError as err:
        raise ValueError(f"{node}: input '{input_name}': {err}") from err


def new_file(folder: str, name: str, node: str, input_name: str) -> Path:
    """Where a new artefact called ``name`` goes: a plain file name in the folder's first path, ``.safetensors`` added."""
    stem = name.removesuffix(EXTENSION)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.\-]{0,120}", stem) or ".." in stem:
        raise ValueError(f"{node}: input '{input_name}' must be a plain file name (letters, digits, space, '_', '-', "
                         f"'.'; no folders or '..'), got {name!r}.")
    root = Path(folder_paths.get_folder_paths(folder)[0])
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{stem}{EXTENSION}"
