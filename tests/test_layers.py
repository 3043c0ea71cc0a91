"""
Tests that the folders of L{relaypool} are its layers: each module imports
only from its own layer and those below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).parent.parent / "relaypool"

# Lowest first. The package's public face and the testing helpers may use
# every layer.
LAYERS = {
    "_reactor": 0,
    "_version": 0,
    "errors": 0,
    "interfaces": 0,
    "transport": 1,
    "nostr": 2,
    "upstream": 3,
    "store": 4,
    "cluster": 5,
    "gateway": 6,
    "daemon": 7,
    "testing": 8,
    "__init__": 8,
}


def _layer(module: str) -> str:
    """
    @param module: a dotted name inside C{relaypool} (without the package).
    @return: its layer: its folder, or the module itself at the top.
    """
    return module.split(".")[0]


def _imports(path: Path) -> set[str]:
    """
    @return: every module C{path} imports, at any depth (also inside
        functions and C{TYPE_CHECKING} blocks), as absolute dotted names.
    """
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
    return found


def _modules() -> dict[str, Path]:
    """
    @return: each module of the package by its name inside the package.
    """
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(parts)] = path
    return modules


class LayerTests(SynchronousTestCase):
    """
    The import rules of the layers.
    """

    def test_everyModuleInALayer(self) -> None:
        """
        Every module of the package belongs to a known layer.
        """
        unknown = sorted(name for name in _modules() if _layer(name) not in LAYERS)
        self.assertEqual(unknown, [])

    def test_importsGoDown(self) -> None:
        """
        No module imports from a layer above its own.
        """
        upward = []
        for name, path in _modules().items():
            rank = LAYERS[_layer(name)]
            for imported in _imports(path):
                if imported == "relaypool":
                    target = "__init__"
                elif imported.startswith("relaypool."):
                    target = _layer(imported[len("relaypool.") :])
                else:
                    continue
                if LAYERS[target] > rank:
                    upward.append(f"{name} imports {imported}")
        self.assertEqual(sorted(upward), [])

    def test_nostrWithoutTwisted(self) -> None:
        """
        The protocol layer imports neither Twisted nor Autobahn.
        """
        found = [
            f"{name} imports {imported}"
            for name, path in _modules().items()
            if _layer(name) == "nostr"
            for imported in _imports(path)
            if imported.split(".")[0] in ("twisted", "autobahn", "txaio", "treq")
        ]
        self.assertEqual(found, [])

    def test_transportWithoutNostr(self) -> None:
        """
        The transport layer knows nothing of Nostr.
        """
        found = [
            f"{name} imports {imported}"
            for name, path in _modules().items()
            if _layer(name) == "transport"
            for imported in _imports(path)
            if imported.startswith("relaypool.nostr")
        ]
        self.assertEqual(found, [])

    def test_everyModuleHasAll(self) -> None:
        """
        Every module says what it exports in C{__all__}, and each name in it
        exists.
        """
        import importlib

        problems = []
        for name in _modules():
            dotted = "relaypool" if name == "__init__" else "relaypool." + name.removesuffix(
                ".__init__"
            )
            module = importlib.import_module(dotted)
            exported = getattr(module, "__all__", None)
            if exported is None:
                problems.append(f"{dotted} has no __all__")
                continue
            problems += [f"{dotted}.{n} is missing" for n in exported if not hasattr(module, n)]
        self.assertEqual(problems, [])
