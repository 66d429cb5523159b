"""The package's own structure: no import cycle, production code apart from the test helpers,
one exception tree, one version."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import re
from pathlib import Path

import pytest

import flask_oa_recall
from flask_oa_recall import errors

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flask_oa_recall"

#: Modules only tests use; production code must not import them.
TEST_ONLY = {"flask_oa_recall.testing", "flask_oa_recall.pytest_plugin"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # ``from . import check`` imports a module; ``from .x import y`` imports x.
                child = f"{base}.{alias.name}"
                found.add(child if child in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle_from(start: str) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, trail = stack.pop()
        for target in GRAPH[node]:
            if target == start:
                return [*trail, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*trail, target]))
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_part_of_an_import_cycle(module: str) -> None:
    # The package's __init__ re-exports everything, so an import of it from inside would be a
    # cycle too; none is allowed, lazy imports included.
    assert _cycle_from(module) is None


@pytest.mark.parametrize("module", sorted(set(MODULES) - TEST_ONLY))
def test_production_code_does_not_import_the_test_helpers(module: str) -> None:
    assert not GRAPH[module] & TEST_ONLY


def test_state_holds_state_only() -> None:
    assert not {m for m in GRAPH["flask_oa_recall.state"] if m.startswith("flask_oa_recall.cli")}


def test_every_exception_the_package_defines_derives_from_oa_recall_error() -> None:
    defined = [
        value
        for _, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, BaseException) and value.__module__ == errors.__name__
    ]
    assert len(defined) == len(errors.__all__)
    assert all(issubclass(cls, flask_oa_recall.OARecallError) for cls in defined)
    assert set(errors.__all__) <= set(flask_oa_recall.__all__)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (errors.UnknownDelivery("d1"), KeyError),
        (errors.ConfigError("OA_RECALL_PATH", "bad"), ValueError),
        (errors.ConfigTypeError("OA_RECALL_TOKENS", "bad"), TypeError),
        (errors.MissingConfig("OA_RECALL_SDKAPPID", "unset"), RuntimeError),
        (errors.SetupError("twice"), RuntimeError),
        (errors.NotSetUp("missing"), RuntimeError),
        (errors.MissingDependency("redis", "needs redis"), RuntimeError),
    ],
    ids=lambda value: type(value).__name__,
)
def test_errors_stay_the_builtin_they_were(error: Exception, builtin: type[Exception]) -> None:
    assert isinstance(error, builtin)
    assert isinstance(error, flask_oa_recall.OARecallError)


def test_errors_carry_typed_attributes() -> None:
    assert errors.UnknownDelivery("d1").delivery_id == "d1"
    assert str(errors.UnknownDelivery("d1")) == "no delivery 'd1' is kept"
    assert errors.DeliveryBusy("d2").delivery_id == "d2"
    assert errors.ConfigError("OA_RECALL_PATH", "bad").key == "OA_RECALL_PATH"
    missing = errors.MissingDependency("redis", "the Redis store needs redis")
    assert missing.extra == "redis"
    assert str(missing) == "the Redis store needs redis: pip install 'flask-oa-recall[redis]'."


def test_the_version_is_the_distributions() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    (declared,) = re.findall(r'^version = "([^"]+)"$', pyproject, flags=re.M)
    assert flask_oa_recall.__version__ == importlib.metadata.version("flask-oa-recall")
    assert flask_oa_recall.__version__ == declared
    # No second copy written as a literal anywhere in the package.
    copies = [
        p for p in PACKAGE.rglob("*.py") if re.search(r"""__version__ = ["']""", p.read_text())
    ]
    assert copies == []


@pytest.mark.parametrize(
    "path",
    sorted(
        str(p.relative_to(ROOT))
        for folder in ("flask_oa_recall", "tests", "bench", "examples", "docs")
        for p in (ROOT / folder).rglob("*.py")
    ),
)
def test_no_formatter_escape_hatch(path: str) -> None:
    marker = "fmt: " + "skip"
    assert marker not in (ROOT / path).read_text()
