"""A minimal PEP 517 / PEP 660 build backend for the `coppice` package (standard library only).

Why not setuptools: `pip install ./sdk/python` with build isolation installs the backend's
requirements from a package index first, which fails on a machine without one. This backend
has no requirements, so pip installs the SDK offline in every mode:

    pip install ./sdk/python                 # isolated build, nothing to download
    pip install --no-build-isolation ./sdk/python
    pip install -e ./sdk/python              # editable (a .pth file pointing at this folder)

It reads the metadata from pyproject.toml's [project] table (tomllib on 3.11+, a small parser
for the few keys used here on 3.10) and packs `coppice/` into a pure-Python wheel.
"""
from __future__ import annotations

import base64
import hashlib
import importlib
import io
import os
import pathlib
import re
import tarfile
import time
import zipfile
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "coppice"
# Reproducible archives: a fixed timestamp (1980-01-01 is the zip epoch).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _parse_toml_subset(text: str) -> dict[str, Any]:
    """Reads `[table]` headers, `key = "string"`, `key = [ "a", "b" ]` (one or many lines) and
    `key = {text = "..."}`: enough for this pyproject.toml on Python 3.10 (no tomllib)."""
    out: dict[str, Any] = {}
    table: dict[str, Any] = out
    lines = iter(text.splitlines())
    for raw in lines:
        line = re.sub(r'\s+#[^"]*$', "", raw.strip())
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[([A-Za-z0-9_.\-]+)\]", line)
        if m:
            table = out
            for part in m.group(1).split("."):
                table = table.setdefault(part, {})
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if value.startswith("[") and not value.endswith("]"):
            for more in lines:
                value += " " + re.sub(r'\s*#[^"]*$', "", more.strip())
                if value.rstrip().endswith("]"):
                    break
        if value.startswith("["):
            table[key] = re.findall(r'"((?:[^"\\]|\\.)*)"', value)
        elif value.startswith("{"):
            table[key] = dict(re.findall(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"', value))
        elif value.startswith('"'):
            table[key] = value[1:-1]
        else:
            table[key] = value
    return out


def _project() -> dict[str, Any]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        data: dict[str, Any] = importlib.import_module("tomllib").loads(text)
    except ImportError:  # Python 3.10
        data = _parse_toml_subset(text)
    return dict(data["project"])


def _dist_name(project: dict[str, Any]) -> str:
    return re.sub(r"[-_.]+", "_", project["name"]).lower()


def _metadata(project: dict[str, Any]) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}",
             f"Version: {project['version']}"]
    if project.get("description"):
        lines.append(f"Summary: {project['description']}")
    if project.get("requires-python"):
        lines.append(f"Requires-Python: {project['requires-python']}")
    lic = project.get("license")
    if isinstance(lic, dict) and lic.get("text"):
        lines.append(f"License: {lic['text']}")
    for c in project.get("classifiers", []):
        lines.append(f"Classifier: {c}")
    for d in project.get("dependencies", []):
        lines.append(f"Requires-Dist: {d}")
    body = ""
    readme = project.get("readme")
    if isinstance(readme, str) and (ROOT / readme).exists():
        lines.append("Description-Content-Type: text/markdown")
        body = (ROOT / readme).read_text(encoding="utf-8")
    return "\n".join(lines) + "\n\n" + body


def _package_files() -> list[pathlib.Path]:
    files = []
    for p in sorted((ROOT / PACKAGE).rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".typed"):
            files.append(p)
    return files


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _write_wheel(wheel_directory: str, entries: list[tuple[str, bytes]],
                 project: dict[str, Any]) -> str:
    name, version = _dist_name(project), project["version"]
    dist_info = f"{name}-{version}.dist-info"
    entries = list(entries)
    entries.append((f"{dist_info}/METADATA", _metadata(project).encode()))
    entries.append((f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: coppice_build\n"
                    b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in entries)
    record += f"{dist_info}/RECORD,,\n"
    entries.append((f"{dist_info}/RECORD", record.encode()))
    filename = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w",
                         zipfile.ZIP_DEFLATED) as zf:
        for path, data in entries:
            info = zipfile.ZipInfo(path, ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return filename


# ---- PEP 517 hooks ---------------------------------------------------------------------------

def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return []


def get_requires_for_build_sdist(config_settings: dict[str, Any] | None = None) -> list[str]:
    return []


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return []


def prepare_metadata_for_build_wheel(metadata_directory: str,
                                     config_settings: dict[str, Any] | None = None) -> str:
    project = _project()
    dist_info = f"{_dist_name(project)}-{project['version']}.dist-info"
    d = pathlib.Path(metadata_directory) / dist_info
    d.mkdir(parents=True, exist_ok=True)
    (d / "METADATA").write_text(_metadata(project), encoding="utf-8")
    (d / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: coppice_build\n"
                             "Root-Is-Purelib: true\nTag: py3-none-any\n", encoding="utf-8")
    return dist_info


def prepare_metadata_for_build_editable(metadata_directory: str,
                                        config_settings: dict[str, Any] | None = None) -> str:
    return prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_wheel(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                metadata_directory: str | None = None) -> str:
    project = _project()
    entries = [(p.relative_to(ROOT).as_posix(), p.read_bytes()) for p in _package_files()]
    return _write_wheel(wheel_directory, entries, project)


def build_editable(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                   metadata_directory: str | None = None) -> str:
    project = _project()
    pth = f"{_dist_name(project)}_editable.pth"
    return _write_wheel(wheel_directory, [(pth, (str(ROOT) + "\n").encode())], project)


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    project = _project()
    base = f"{_dist_name(project)}-{project['version']}"
    members: list[pathlib.Path] = [ROOT / "pyproject.toml", ROOT / "_build" / "coppice_build.py"]
    for extra in ("README.md",):
        if (ROOT / extra).exists():
            members.append(ROOT / extra)
    members += _package_files()
    members += sorted(p for p in (ROOT / "examples").glob("*.py")) if (ROOT / "examples").is_dir() \
        else []
    filename = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, filename), "w:gz", format=tarfile.PAX_FORMAT) \
            as tf:
        def add(arcname: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"{base}/{arcname}")
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tf.addfile(info, io.BytesIO(data))
        for p in members:
            add(p.relative_to(ROOT).as_posix(), p.read_bytes())
        add("PKG-INFO", _metadata(project).encode())
    return filename
