"""The package boundaries the design depends on: the API never loads TensorFlow, ``ml`` never
imports the service, and no module of ours imports itself back through a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "workers", "imgq", "ml")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")
    }


def _imported(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count: a lazy import
    is how a cycle hides)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imports(package: str) -> set[str]:
    """Top-level names of what ``package`` imports."""
    return {
        name.split(".")[0]
        for module, path in _modules().items()
        if module.split(".")[0] == package
        for name in _imported(path)
    }


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        module: {name for name in _imported(path) if name in modules and name != module}
        for module, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back_through_a_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_ml_never_imports_the_service_nor_the_web_or_queue_stack() -> None:
    assert not _imports("ml") & {
        "flask",
        "flask_smorest",
        "celery",
        "celery_batches",
        "redis",
        "api",
        "workers",
        "imgq",
    }


def test_imgq_takes_only_error_classes_from_ml_and_never_tensorflow_or_flask() -> None:
    imported = {
        name
        for module, path in _modules().items()
        if module.startswith("imgq")
        for name in _imported(path)
    }
    assert {name for name in imported if name.split(".")[0] == "ml"} <= {
        "ml.errors",
        *(f"ml.errors.{name}" for name in dir(__import__("ml.errors").errors)),
    }
    assert not {name.split(".")[0] for name in imported} & {
        "tensorflow",
        "keras",
        "flask",
        "flask_smorest",
        "api",
        "workers",
    }


def test_api_never_imports_workers() -> None:
    assert "workers" not in _imports("api")


def test_workers_never_import_the_web_stack() -> None:
    assert not _imports("workers") & {"flask", "flask_smorest", "api"}


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


def test_each_worker_kind_loads_only_its_own_tasks_and_no_tensorflow() -> None:
    probe = (
        "import sys, importlib; "
        "kinds = {k: importlib.import_module(f'workers.{k}_worker').app "
        "for k in ('predict', 'train', 'webhooks')}; "
        "print({k: sorted(t for t in app.tasks if t.startswith('imgq.')) "
        "for k, app in kinds.items()}, "
        "{k: app.context.model_cache is not None for k, app in kinds.items()}, "
        "'tensorflow' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == (
        "{'predict': ['imgq.explain', 'imgq.predict_image'], "
        "'train': ['imgq.train.export', 'imgq.train.finetune', 'imgq.train.ingest'], "
        "'webhooks': ['imgq.webhooks.deliver']} "
        "{'predict': True, 'train': False, 'webhooks': False} False"
    )
