"""The layers of the package, as its modules import each other (read from their source,
every import statement, those inside functions too): the core and the fan-out import no
transport, and nothing in the package imports the example project. Every module is in
one layer here, so that a new one has to say where it belongs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "streaming_app"

#: The engine and what it is built on: no HTTP, no websockets (modules at the top
#: level, and the subpackages whose every module is in the layer).
CORE = {
    "admission", "appends", "clients", "conf", "deletion", "errors", "exceptions", "loops", "models",
    "parts", "permissions", "rates", "signals", "streams",
}  # fmt: skip
CORE_PACKAGES = {"drive", "sources"}
#: Committed updates to this process's viewers and the others': no transport.
FANOUT_PACKAGES = {"fanout"}
#: What talks to browsers (HTTP, websockets, HTML) or to the Django admin: each
#: package a transport of its own; ``protocol`` the wire format two of them share,
#: ``render`` the HTML of parts the template tag and the admin share.
TRANSPORTS = {"protocol", "render", "views", "routing", "urls", "admin"}
TRANSPORT_PACKAGES = {"http", "websocket", "aisdk", "durable", "templatetags"}
#: What the transports share: a wire format, a renderer.
SHARED = {"protocol", "render"}
#: What of ``http`` the AI SDK's responses and Durable Streams build on (their drive and
#: their viewers are HTTP's).
HTTP_BASE = {"http.drive", "http.body", "http.following", "http.responses", "http.jsonview"}
#: The package's entry points: its public names, its AppConfig and checks, commands.
ENTRIES = {"__init__", "apps", "checks"}
ENTRY_PACKAGES = {"management"}


def layer(name: str) -> str:
    """The layer of module ``name`` (dotted, under streaming_app)."""
    package = name.split(".")[0]
    for layer_name, modules_, packages in (
        ("core", CORE, CORE_PACKAGES),
        ("fanout", set(), FANOUT_PACKAGES),
        ("transport", TRANSPORTS, TRANSPORT_PACKAGES),
        ("entry", ENTRIES, ENTRY_PACKAGES),
    ):
        if name in modules_ or package in packages:
            return layer_name
    return "none"


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
    unplaced = {name for name in modules() if layer(name) == "none"}
    assert unplaced == set(), "a module in no layer: place it in tests/test_layers.py"
    top = CORE | TRANSPORTS | ENTRIES
    packages = CORE_PACKAGES | FANOUT_PACKAGES | TRANSPORT_PACKAGES | ENTRY_PACKAGES
    assert len(top) == len(CORE) + len(TRANSPORTS) + len(ENTRIES), "a module in two layers"
    assert not top & packages, "a name both a module and a package"


def crossings(importers: str, imported: set[str] | None = None) -> set[tuple[str, str]]:
    """(module, what it imports) for the modules of layer ``importers`` that import a
    module of a layer in ``imported``."""
    return {
        (name, module)
        for name, path in modules().items()
        if layer(name) == importers
        for module in app_modules(imports(name, path))
        if imported is None or layer(module) in imported
    }


def test_the_core_and_the_fan_out_import_no_transport():
    assert crossings("core", {"transport"}) | crossings("fanout", {"transport"}) == set()


def test_the_core_imports_nothing_of_the_fan_out_but_publishing():
    """The engine hands committed updates to ``publish`` (and ``outbox``, from sync
    code); the hub is the transports'."""
    found = {(name, module) for name, module in crossings("core", {"fanout"})}
    assert {module for _, module in found} <= {"fanout", "fanout.publish", "fanout.outbox"}


def test_no_transport_imports_another():
    """Each transport package imports the core, the fan-out and the shared wire format
    (``protocol``) and HTML (``render``), never another transport's modules; the AI SDK's
    responses and Durable Streams build on HTTP's drive and viewers (:data:`HTTP_BASE`),
    not on its views."""
    found = set()
    for name, module in crossings("transport", {"transport"}):
        mine, theirs = name.split(".")[0], module.split(".")[0]
        if theirs == mine or theirs in SHARED:
            continue
        if mine in {"aisdk", "durable"} and module in HTTP_BASE:
            continue
        if mine not in TRANSPORT_PACKAGES:
            continue  # urls, routing, the views shim: they gather the transports
        found.add((name, module))
    assert found == set()


def test_importing_the_hub_loads_no_transport():
    """``import streaming_app.fanout.hub`` in a fresh interpreter: no module of
    ``http``, ``websocket``, ``aisdk`` or ``durable`` is loaded."""
    code = (
        "import django, sys; django.setup(); import streaming_app.fanout.hub; "
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('streaming_app.'))))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    loaded = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    assert "streaming_app.fanout.hub" in loaded
    assert [m for m in loaded if m.split(".")[1] in {"http", "websocket", "aisdk", "durable"}] == []


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
    assert "http.drive" in app_modules(imports("views", PACKAGE / "views.py"))
    assert "parts" in app_modules(imports("sources.openai", PACKAGE / "sources" / "openai.py"))
