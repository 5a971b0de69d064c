"""Imports only run down: every module of jrnn/ imports only modules of lower layers (so there is
no cycle), imports only at module top (no function-level import), and never reaches into another
module's `_private` names. Read from the source (ast), so it holds without importing anything."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jrnn"

# bottom to top; a module may import only modules of strictly lower layers (docs/architecture.md)
LAYERS = [
    ["jrnn.checks", "jrnn.crossovers"],
    ["jrnn.losses", "jrnn.initializers", "jrnn.data", "jrnn.bptt", "jrnn.testing", "jrnn.optim", "jrnn.checkpoint",
     "jrnn.batch_split"],
    ["jrnn.rnn"],                                   # the time loop: Cell, scan, run, masks, FullBPTT/Remat
    ["jrnn.projection"],
    ["jrnn.hoisted"],
    ["jrnn.cells.common"],
    ["jrnn.cells.lstm", "jrnn.cells.gru", "jrnn.cells.elman", "jrnn.cells.paragru", "jrnn.cells.paralstm",
     "jrnn.cells.mingru"],
    ["jrnn.cells", "jrnn.elman_scan"],
    ["jrnn.parallel"],                              # a strategy value: the scan never imports it
    ["jrnn.tbptt"],                                 # a strategy value and its windows: no model
    ["jrnn.model"],
    ["jrnn.elman", "jrnn.lm", "jrnn.sample", "jrnn.interop"],
    ["jrnn.train"],
    ["jrnn.distributed"],
    ["jrnn"],
]
LAYER = {m: i for i, ms in enumerate(LAYERS) for m in ms}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, tree: ast.Module):
    """(jrnn modules imported, {alias: module}, private names imported by name)."""
    out, aliases, private = set(), {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jrnn"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in MODULES:
                    out.add(full)
                    aliases[a.asname or a.name] = full
                else:
                    out.add(node.module)
                    if a.name.startswith("_"):
                        private.append(f"from {node.module} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("jrnn"):
                    out.add(a.name)
                    aliases[a.asname or a.name] = a.name
    return out - {name}, aliases, private


def test_every_module_of_the_package_has_a_layer():
    assert set(MODULES) == set(LAYER), (sorted(set(MODULES) - set(LAYER)), sorted(set(LAYER) - set(MODULES)))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_only_from_lower_layers(name):
    tree = ast.parse(MODULES[name].read_text())
    imported, _, _ = _imports(name, tree)
    upward = sorted(m for m in imported if m in LAYER and LAYER[m] >= LAYER[name] and m != "jrnn")
    assert not upward, f"{name} (layer {LAYER[name]}) imports {upward} from its own layer or above"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_sit_at_module_top_and_no_private_name_crosses_a_module(name):
    tree = ast.parse(MODULES[name].read_text())
    nested = [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n not in tree.body]
    assert not nested, f"{name}: imports inside functions or blocks at lines {nested}"
    _, aliases, private = _imports(name, tree)
    private += [f"{n.value.id}.{n.attr} (line {n.lineno})" for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
                and n.attr.startswith("_") and not n.attr.startswith("__")]
    assert not private, f"{name} reaches into private names: {private}"


def test_the_checker_sees_an_upward_import_a_nested_one_and_a_private_reach():
    """The three rules catch what they are for (so a passing run means something)."""
    bad = ast.parse("from jrnn import model\nimport jax\ndef f():\n    import jrnn.tbptt\n    return model._compute\n")
    imported, aliases, _ = _imports("jrnn.rnn", bad)
    assert "jrnn.model" in imported and LAYER["jrnn.model"] > LAYER["jrnn.rnn"]
    assert [n.lineno for n in ast.walk(bad) if isinstance(n, ast.Import) and n not in bad.body] == [4]
    assert any(isinstance(n, ast.Attribute) and n.attr == "_compute" and n.value.id in aliases for n in ast.walk(bad))
