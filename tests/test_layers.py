"""The module structure of docs/ARCHITECTURE.md ("Layers"), checked on the source:

* the import contracts of pyproject.toml (import-linter: layers, forbidden imports, no cycles) hold;
* no module imports a private name (``_x``) from another first-party module;
* only ``dicom_node/pynetdicom_compat.py`` touches pynetdicom internals;
* workers never read the YAML file (they get the validated config from the main process).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("nodecore", "dicom_node", "inference", "sr_writer", "bench")
PRIVATE_IMPORTS_BEING_REMOVED: set[tuple[str, str, str]] = set()  # none left


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports (import-linter) is not installed: pip install -e '.[test]'")
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_private_names_cross_modules() -> None:
    modules = _modules()
    found = set()
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] not in PACKAGES or base == name:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.add((name, base, alias.name))
    assert found <= PRIVATE_IMPORTS_BEING_REMOVED, sorted(found - PRIVATE_IMPORTS_BEING_REMOVED)


def test_pynetdicom_internals_only_in_the_compatibility_module() -> None:
    internals = ("pynetdicom.transport", "pynetdicom.dul", "pynetdicom.acse", "_create_association", "._servers",
                 ".dul.", "send_reject", "to_user_queue", "state_machine")
    offenders = []
    for name, path in _modules().items():
        if name == "dicom_node.pynetdicom_compat":
            continue
        text = path.read_text()
        offenders += [f"{name}: {word}" for word in internals if word in text]
    assert not offenders


def test_workers_do_not_read_the_configuration_file() -> None:
    tree = ast.parse((ROOT / "dicom_node" / "workers.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "load_config" not in imported and "dicom_node.config" not in modules and "yaml" not in modules
