"""The layers of the package, as its modules import each other (read from their source,
every import statement, those inside functions too): the core and the fan-out import no
transport, and nothing in the package imports the example project. Every module is in
one layer here, so that a new one has to say where it belongs."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "streaming_app"

#: The engine and what it is built on: no HTTP, no websockets.
CORE = {
    "admission", "clients", "conf", "deletion", "errors", "exceptions", "loops", "models",
    "parts", "permissions", "signals", "streams",
    "drive", "drive.committer", "drive.flush", "drive.persist", "drive.run", "drive.threads",
    "drive.writer",
    "sources", "sources.openai",
}  # fmt: skip
#: Committed updates to this process's viewers and the others': no transport.
FANOUT = {"fanout", "fanout.publish", "fanout.hub"}
#: What talks to browsers (HTTP, websockets, HTML) or to the Django admin.
TRANSPORTS = {
    "views", "http", "http.views", "http.sse", "aisdk", "aisdk.views",
    "websocket", "websocket.consumers", "routing", "urls", "admin",
    "templatetags", "templatetags.streaming",
}  # fmt: skip
#: The package's entry points: its public names, its AppConfig and checks, commands.
ENTRIES = {"__init__", "apps", "checks", "management", "management.commands"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts
    }


def imports(name: str, path: Path) -> set[str]:
    """The absolute names ``name`` imports (``streaming_app.x``, ``example_project.y``)."""
    package = ["streaming_app", *name.split(".")]
    if path.name != "__init__.py":
        package.pop()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            # from . import conf: a module, not a name.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def app_modules(names: set[str]) -> set[str]:
    known = modules()
    return {
        name.removeprefix("streaming_app.")
        for name in names
        if name.startswith("streaming_app.") and name.removeprefix("streaming_app.") in known
    }


def test_every_module_is_in_one_layer():
    layers = [CORE, FANOUT, TRANSPORTS, ENTRIES]
    every = set().union(*layers)
    commands = {n for n in modules() if n.startswith("management.commands.")}
    assert set(modules()) - commands == every
    assert sum(len(layer) for layer in layers) == len(every), "a module in two layers"


def test_the_core_and_the_fan_out_import_no_transport():
    crossings = {
        (name, imported)
        for name, path in modules().items()
        if name in CORE | FANOUT
        for imported in app_modules(imports(name, path)) & TRANSPORTS
    }
    assert crossings == set()


def test_the_core_imports_nothing_of_the_fan_out_but_publish():
    """The engine hands committed updates to ``publish``; the hub is the transports'."""
    crossings = {
        (name, imported)
        for name, path in modules().items()
        if name in CORE
        for imported in app_modules(imports(name, path)) & (FANOUT - {"fanout", "fanout.publish"})
    }
    assert crossings == set()


def test_the_models_import_nothing_of_the_package_but_parts():
    """The models are the bottom of the core: what deletes, publishes or writes streams
    imports them, not the other way round (a deletion's lock and cancel are
    ``deletion``'s, connected by the app's ``ready()``)."""
    assert app_modules(imports("models", PACKAGE / "models.py")) == {"parts"}


def test_nothing_in_the_package_imports_the_example_project():
    importers = {
        name
        for name, path in modules().items()
        if any(i.split(".")[0] == "example_project" for i in imports(name, path))
    }
    assert importers == set()


def test_the_scan_sees_imports_inside_functions_and_relative_ones():
    """The test's own reader: a lazy import is an import (apps imports the hub in
    ``ready()``), and ``from . import conf`` names the module."""
    assert "fanout.hub" in app_modules(imports("apps", PACKAGE / "apps.py"))
    assert "conf" in app_modules(imports("http.views", PACKAGE / "http" / "views.py"))
    assert "http.views" in app_modules(imports("views", PACKAGE / "views.py"))
    assert "parts" in app_modules(imports("sources.openai", PACKAGE / "sources" / "openai.py"))
