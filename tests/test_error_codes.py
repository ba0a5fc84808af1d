"""Every error code a client can see is one class, and the README's error tables list exactly
those classes with their statuses, so the documentation and the code cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from imgq import errors
from ml.errors import ImgqError

REPO = Path(__file__).resolve().parent.parent
ERROR_MODULES = {REPO / "imgq" / "errors.py", REPO / "ml" / "errors.py"}
_CODE = re.compile(r"`([a-z_]+)`")


def _error_classes() -> list[type[ImgqError]]:
    found, frontier = [], [ImgqError]
    while frontier:
        cls = frontier.pop()
        found.append(cls)
        frontier.extend(cls.__subclasses__())
    return found


def _readme_tables() -> tuple[dict[str, str], set[str]]:
    """``code -> status`` of the answers table, and the codes of the job-errors table."""
    text = (REPO / "README.md").read_text()
    answers: dict[str, str] = {}
    job_codes: set[str] = set()
    in_answers = in_jobs = False
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| status | code | when |"):
            in_answers = True
            continue
        if line.startswith("| code | when |"):
            in_jobs = True
            continue
        if not line.startswith("|"):
            in_answers = in_jobs = False
            continue
        if in_answers and cells[0] != "---":
            answers.update(dict.fromkeys(_CODE.findall(cells[1]), cells[0]))
        if in_jobs and cells[0] != "---":
            job_codes.update(_CODE.findall(cells[0]))
    return answers, job_codes


def test_error_classes_are_defined_only_in_the_two_error_modules() -> None:
    names = {cls.__name__ for cls in _error_classes()}
    strays = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name}"
        for package in ("api", "workers", "imgq", "ml")
        for path in (REPO / package).rglob("*.py")
        if path not in ERROR_MODULES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(isinstance(base, ast.Name) and base.id in names for base in node.bases)
    ]
    assert strays == []


def test_the_readme_lists_every_code_and_nothing_else() -> None:
    answers, job_codes = _readme_tables()
    assert answers, "the README's error table was not found"
    assert set(answers) | job_codes == {cls.code for cls in _error_classes()}


def test_the_readme_gives_each_answer_its_status() -> None:
    answers, _ = _readme_tables()
    for cls in _error_classes():
        if cls.code in answers and not answers[cls.code].endswith("xx"):
            assert answers[cls.code] == str(cls.status), cls


def test_each_code_belongs_to_one_status() -> None:
    statuses: dict[str, set[int]] = {}
    for cls in _error_classes():
        statuses.setdefault(cls.code, set()).add(cls.status)
    assert {code: s for code, s in statuses.items() if len(s) > 1} == {}


def test_bare_http_statuses_map_to_their_classes() -> None:
    assert errors.http_error_class(401) is errors.Unauthorized
    assert errors.http_error_class(422) is errors.ValidationFailed
    assert errors.http_error_class(416) is None
