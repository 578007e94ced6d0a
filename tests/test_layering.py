"""The shape of the house: no import cycle among our modules, `transinv/` never imports Ray,
config validates without torch, and every registry behaves one way.

Run: .venv/bin/pytest tests/test_layering.py -q   (a few seconds; one subprocess).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from transinv.choices import MODELS, REGIMES, REGISTRIES, SOURCES, Registry
from transinv.config import ConfigError, registry_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("transinv", "study")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of our packages (a package is its
    __init__.py)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name `path` imports, at module level or inside functions, with relative
    imports resolved and `from pkg import submodule` counted as the submodule."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Our module -> our modules it imports (names that are not modules of ours are dropped)."""
    files = module_files()
    return {
        module: {name for name in imported_names(path, module) if name in files} - {module}
        for module, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_sees_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from transinv import models\n    from . import x\n")
    assert {"transinv.models", "pkg.x"} <= imported_names(source, "pkg.mod")


def test_no_import_cycle_among_our_modules():
    """Registries load their owner module by a fixed path (`choices.Registry.load`), which is
    not an import edge: owners register into the ground floor, never the reverse."""
    graph = import_graph()
    assert {"transinv.config", "transinv.choices", "transinv.models", "study.cli"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_config_and_choices_are_the_ground_floor():
    graph = import_graph()
    assert graph["transinv.choices"] == set()
    assert graph["transinv.config"] == {"transinv.choices"}


def test_transinv_never_imports_ray():
    files = module_files()
    offenders = {
        module: sorted(n for n in imported_names(path, module) if n.split(".")[0] == "ray")
        for module, path in files.items()
        if module.startswith("transinv")
    }
    assert not {m: n for m, n in offenders.items() if n}


BLOCK_TORCH = textwrap.dedent(
    """
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"blocked for the test: {name}")
            return None

    sys.meta_path.insert(0, BlockTorch())
    from transinv.config import ConfigError, from_flat

    def error(flat):
        try:
            from_flat(flat)
        except ConfigError as exc:
            return str(exc)
        return "no error"

    print(error({"canvas.size": 10}))
    print(error({"pretrain.dataset": "glyphs_b"}))
    print(error({}))
    print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")))
    """
)


def test_config_validates_with_torch_unavailable():
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    bounds, cross_key, registry, loaded = done.stdout.strip().split("\n")
    assert "'canvas.size'" in bounds and ">= 32" in bounds
    assert "finetune.dataset" in cross_key and "must differ" in cross_key
    # Registry names come last and need their module: a ConfigError says so, not a
    # ModuleNotFoundError.
    assert "model.arch" in registry and "transinv.models" in registry and "torch" in registry
    assert loaded == "[]"


def test_a_registry_takes_the_name_from_the_function_and_keeps_its_facts():
    reg = Registry("thing", "transinv.choices", facts=("size",))

    @reg.register(size=3)
    def small_thing() -> str:
        """A small thing. More words."""
        return "built"

    reg.register(name="odd-name", size=None)(lambda: "odd")
    assert list(reg) == ["small_thing", "odd-name"]
    assert reg["small_thing"]() == "built" and reg.facts("small_thing") == {"size": 3}
    assert reg.entry("small_thing").doc == "A small thing."
    assert reg.names(size=3) == ["small_thing"] and "odd-name" in reg


def test_a_registry_refuses_a_duplicate_name_and_undeclared_facts():
    reg = Registry("thing", "transinv.choices", facts=("size",))

    def thing() -> None: ...

    reg.register(size=1)(thing)
    with pytest.raises(ValueError, match="thing 'thing' is registered twice"):
        reg.register(size=2)(thing)
    with pytest.raises(TypeError, match="missing"):
        reg.register()
    with pytest.raises(TypeError, match="unknown"):
        reg.register(size=1, colour="red")
    assert len(reg) == 1


def test_a_registry_whose_module_cannot_load_is_a_config_error_naming_the_key():
    reg = Registry("thing", "transinv.no_such_module")
    with pytest.raises(ImportError):
        reg.names()
    with pytest.raises(ConfigError, match="registry for model.arch needs transinv.no_such_module"):
        registry_names("model.arch", reg)


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.kind)
def test_every_entry_declares_the_registry_facts_and_a_doc(registry):
    assert registry.entries()
    for entry in registry.entries():
        assert set(entry.facts) == set(registry.fact_names), entry.name
        assert entry.doc, f"{registry.kind} {entry.name} has no docstring"


def test_the_registries_are_the_ones_the_owner_modules_fill():
    from transinv import models, regimes, sources

    assert models.MODELS is MODELS and sources.SOURCES is SOURCES and regimes.REGIMES is REGIMES
    assert MODELS.names(head="gap") == ["small_cnn_gap", "resnet18", "densenet121"]
