"""The package boundaries the design depends on: the API never loads TensorFlow, ``ml`` never
imports the web or queue stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _imports(package: str) -> set[str]:
    names: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_ml_never_imports_flask_celery_or_redis() -> None:
    assert not _imports("ml") & {
        "flask",
        "flask_smorest",
        "celery",
        "celery_batches",
        "redis",
        "api",
        "workers",
    }


def test_api_never_imports_workers() -> None:
    assert "workers" not in _imports("api")


def test_building_the_api_does_not_load_tensorflow() -> None:
    keys = '[{"client": "a", "role": "admin", "key_sha256": "00", "webhook_secret": "s"}]'
    probe = (
        "import sys, tempfile; from api.app import create_app; from imgq.settings import Settings; "
        "create_app(Settings(model_store=tempfile.mkdtemp(), api_keys_file=None, "
        f"api_keys={keys!r})); "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"
