"""The pack's files: safetensors tensors plus one JSON record in the metadata, written atomically, read strictly.

Every artefact (a VRG error profile, a POLARIS trace) is a safetensors file whose metadata holds ``format``,
``format_version`` and ``record``, a JSON object of plain fields with fixed types. Reading never unpickles, and any file
that is not exactly such an artefact, or is truncated or damaged, raises a ``ValueError`` that says what to do.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def pack_version(pyproject: Path = PYPROJECT) -> str:
    """The pack's version, read from its ``pyproject.toml`` (the one place it is written): the ``version`` of the
    ``[project]`` table."""
    project = re.search(r"^\[project\]$(.*?)(?=^\[|\Z)", pyproject.read_text(encoding="utf-8"), re.M | re.S)
    version = project and re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.M)
    if not version:
        raise ValueError(f"{pyproject} has no version in its [project] table")
    return version.group(1)


PACK_VERSION = pack_version()
"""What every artefact records as the pack version that wrote it."""


@dataclass(frozen=True)
class ArtefactFormat:
    """What one kind of artefact holds: its format tag and version, tensor names, and the JSON type of each field."""

    name: str
    version: str
    tensors: tuple[str, ...]
    fields: dict[str, type]
    what: str  # for messages, e.g. "VRG error profile"
    fix: str  # what the user can do about a bad file
    former_names: tuple[str, ...] = ()  # format tags of files written before a rename: read as this format
    former_versions: dict[str, dict] = field(default_factory=dict)
    """Earlier format versions still read: version -> the fields added since, with the value an old file means."""

    def save(self, path: str | os.PathLike, tensors: dict[str, Tensor], record: dict) -> None:
        """Write atomically: a temp file beside ``path``, then a rename, so no reader ever sees half a file."""
        path = os.fspath(path)
        metadata = {"format": self.name, "format_version": self.version,
                    "record": json.dumps({k: record[k] for k in self.fields}, sort_keys=True)}
        fd, tmp = tempfile.mkstemp(prefix=".error-control-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        try:
            save_file({k: tensors[k].contiguous() for k in self.tensors}, tmp, metadata=metadata)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def load(self, path: str | os.PathLike, where: str) -> tuple[dict[str, Tensor], dict]:
        """Tensors and record of a file written by :meth:`save`; ``ValueError`` naming ``where`` for anything else."""
        path = os.fspath(path)
        try:
            with safe_open(path, framework="pt") as f:
                meta, keys = f.metadata() or {}, set(f.keys())
                if meta.get("format") not in (self.name, *self.former_names):
                    raise ValueError(f"{where}: {path} is a safetensors file but not a {self.what}. {self.fix}")
                added = self.former_versions.get(meta.get("format_version"), {})
                if meta.get("format_version") != self.version and not added:
                    raise ValueError(f"{where}: {path} has {self.what} format {meta.get('format_version')!r}, this pack "
                                     f"reads {self.version!r}. Update the pack, or make the file again.")
                if keys != set(self.tensors):
                    raise ValueError(f"{where}: {path} holds {sorted(keys)}, not {list(self.tensors)}. {self.fix}")
                tensors = {k: f.get_tensor(k) for k in self.tensors}
        except SafetensorError as e:
            raise ValueError(f"{where}: {path} is not a readable safetensors file ({e}). {self.fix}") from e
        try:
            record = json.loads(meta.get("record", ""))
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: {path} is a damaged {self.what}: {e}. {self.fix}") from e
        expected = {k: kind for k, kind in self.fields.items() if k not in added}  # an earlier version has fewer
        if not (isinstance(record, dict) and set(record) == set(expected)
                and all(isinstance(record[k], kind) for k, kind in expected.items())):
            raise ValueError(f"{where}: {path} is a damaged {self.what}: unexpected metadata {record!r}. {self.fix}")
        return tensors, {**record, **added}
