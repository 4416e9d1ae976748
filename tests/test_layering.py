"""The package's layers, checked on the source text (an AST walk; nothing checked is imported).

- The maths modules (`src/flowrl/_*.py`) depend only on the numerics stack and each other.
- `flowrl.data` does not depend on `flowrl.experiment`.
- Nothing under `src/` imports the example or benchmark scripts, or edits `sys.path`.
- The examples use only flowrl's public names, import no other example, and leave `sys.path`.
- The benchmarks patch no private module or private attribute.

Each rule is a checker taking the directory to check (so the tests below also plant a
violation in a temporary tree and see it reported) and returning `path:line: message` lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
EXAMPLES = ROOT / "examples"
BENCHMARKS = ROOT / "benchmarks"

# The maths modules: every `src/flowrl/_*.py` except these. The host side (I/O, logging,
# checkpoints, datasets) lives in the subpackages `flowrl.experiment` and `flowrl.data`.
NOT_MATHS = frozenset({"_version"})
# Named explicitly so that a renamed or moved module is noticed (the glob finds new ones).
MATHS_NAMED = (
    "_networks",
    "_velocity",
    "_flows",
    "_critics",
    "_targets",
    "_returns",
    "_losses",
    "_draws",
    "_policies",
    "_expanded",
    "_blocks",
    "_checks",
    "_selection",
    "_improvement",
)
MATHS_ALLOWED = frozenset(
    {
        "jax",
        "jaxlib",
        "equinox",
        "diffrax",
        "optax",
        "jaxtyping",
        "numpy",
        "typing",
        "__future__",
        "collections",
        "dataclasses",
        "functools",
        "math",
        "abc",
        "itertools",
        "operator",
        "warnings",
        "types",
    }
)
SYS_PATH_MUTATORS = frozenset({"insert", "append", "extend", "remove", "pop", "clear"})


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        try:
            shown = self.path.relative_to(ROOT)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Import:
    """One imported module name, made absolute; `bound` is the local name it binds, if any."""

    line: int
    target: str
    relative: bool
    bound: str | None


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _package_of(path: Path, src_root: Path | None) -> list[str]:
    """The package a file's relative imports start from (`[]` for a script)."""
    if src_root is None:
        return []
    try:
        return list(path.relative_to(src_root).parent.parts)
    except ValueError:
        return []


def _imports(tree: ast.AST, package: Sequence[str]) -> Iterator[Import]:
    """Every import in `tree`, at any depth: `import a.b`, `from x import y` (both `x` and
    `x.y`, since `y` may be a submodule), relative imports resolved against `package`, and
    `importlib.import_module("m")` / `__import__("m")` with a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                target = alias.name if alias.asname else alias.name.split(".")[0]
                yield Import(node.lineno, alias.name, False, None)
                yield Import(node.lineno, target, False, bound)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                keep = len(package) - (node.level - 1)
                base = list(package[:keep]) if keep > 0 else ["<outside the package>"]
            else:
                base = []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if node.module:
                yield Import(node.lineno, module, node.level > 0, None)
            for alias in node.names:
                if alias.name != "*":
                    name = f"{module}.{alias.name}" if module else alias.name
                    yield Import(node.lineno, name, node.level > 0, alias.asname or alias.name)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
            ):
                yield Import(node.lineno, arg.value, arg.value.startswith("."), None)


def _aliases(imports: Iterable[Import]) -> dict[str, str]:
    """Local name -> the absolute dotted name it refers to."""
    return {imp.bound: imp.target for imp in imports if imp.bound is not None}


def _dotted(node: ast.AST) -> list[str] | None:
    """`a.b.c` as `["a", "b", "c"]` when the chain starts at a plain name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _resolve(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """The absolute dotted name of an attribute chain rooted at an imported name."""
    parts = _dotted(node)
    if parts is None or parts[0] not in aliases:
        return None
    return ".".join([aliases[parts[0]], *parts[1:]])


def _sys_path_edits(tree: ast.AST, path: Path, aliases: dict[str, str]) -> list[Violation]:
    """`sys.path.insert(...)` and friends, `sys.path = ...`, `sys.path[...] = ...`,
    `sys.path += ...`, `from sys import path` and `site.addsitedir(...)`."""

    def is_sys_path(node: ast.AST) -> bool:
        if isinstance(node, ast.Subscript):
            node = node.value
        return _resolve(node, aliases) == "sys.path"

    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in SYS_PATH_MUTATORS and is_sys_path(node.func.value):
                found.append(Violation(path, line, f"edits sys.path (`.{node.func.attr}`)"))
            elif _resolve(node.func, aliases) == "site.addsitedir":
                found.append(Violation(path, line, "edits sys.path (`site.addsitedir`)"))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(is_sys_path(t) for t in _flat(targets)):
                found.append(Violation(path, line, "assigns to sys.path"))
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and not node.level:
            if any(alias.name == "path" for alias in node.names):
                found.append(Violation(path, line, "imports sys.path (`from sys import path`)"))
    return found


def _flat(targets: Iterable[ast.AST]) -> Iterator[ast.AST]:
    for target in targets:
        if isinstance(target, (ast.Tuple, ast.List)):
            yield from _flat(target.elts)
        elif isinstance(target, ast.Starred):
            yield from _flat([target.value])
        else:
            yield target


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _script_stems(*dirs: Path) -> set[str]:
    return {p.stem for d in dirs if d.is_dir() for p in d.glob("*.py")}


def maths_modules(src_root: Path) -> list[Path]:
    """The maths modules: `flowrl/_*.py` directly under `src_root`, except `_version.py` (and
    `__init__.py`, which re-exports both sides)."""
    paths = (src_root / "flowrl").glob("_*.py")
    return sorted(p for p in paths if p.stem not in NOT_MATHS and not p.stem.startswith("__"))


# ---- the checkers ----


def check_maths_imports(src_root: Path) -> list[Violation]:
    """(a) A maths module imports only the numerics stack, the standard-library modules in
    `MATHS_ALLOWED`, and (relatively) its sibling maths modules."""
    siblings = {p.stem for p in maths_modules(src_root)} | NOT_MATHS
    found = []
    for path in maths_modules(src_root):
        for imp in _imports(_parse(path), _package_of(path, src_root)):
            parts = imp.target.split(".")
            if imp.relative:
                ok = len(parts) >= 2 and parts[0] == "flowrl" and parts[1] in siblings
            else:
                ok = parts[0] in MATHS_ALLOWED
            if not ok:
                how = "relative import of" if imp.relative else "imports"
                found.append(
                    Violation(
                        path,
                        imp.line,
                        f"maths module {how} `{imp.target}`: allowed are MATHS_ALLOWED in "
                        "tests/test_layering.py and sibling maths modules (`from ._x import ...`)",
                    )
                )
    return _unique(found)


def check_data_independent_of_experiment(src_root: Path) -> list[Violation]:
    """(b) Nothing in `flowrl/data/` imports `flowrl.experiment` (absolute or relative)."""
    found = []
    for path in sorted((src_root / "flowrl" / "data").rglob("*.py")):
        for imp in _imports(_parse(path), _package_of(path, src_root)):
            if imp.target == "flowrl.experiment" or imp.target.startswith("flowrl.experiment."):
                found.append(
                    Violation(
                        path,
                        imp.line,
                        f"flowrl.data imports `{imp.target}`: data is "
                        "host-side but below the experiment layer",
                    )
                )
    return _unique(found)


def check_src_imports_no_scripts(src_root: Path, script_dirs: Sequence[Path]) -> list[Violation]:
    """(c) Nothing under `src_root` imports `examples`, `benchmarks` or any of their scripts
    (by file stem), or edits `sys.path`."""
    scripts = _script_stems(*script_dirs) | {d.name for d in script_dirs}
    found = []
    for path in sorted(src_root.rglob("*.py")):
        tree = _parse(path)
        imports = list(_imports(tree, _package_of(path, src_root)))
        for imp in imports:
            if not imp.relative and imp.target.split(".")[0] in scripts:
                found.append(Violation(path, imp.line, f"imports the script module `{imp.target}`"))
        found += _sys_path_edits(tree, path, _aliases(imports))
    return _unique(found)


def check_examples(examples_dir: Path) -> list[Violation]:
    """(d) An example uses only public flowrl names (no `flowrl._x`, `flowrl.experiment._x`,
    imported or as an attribute), imports no other example, and does not edit `sys.path`."""
    stems = _script_stems(examples_dir)
    found = []
    for path in sorted(examples_dir.glob("*.py")):
        tree = _parse(path)
        imports = list(_imports(tree, []))
        aliases = _aliases(imports)
        for imp in imports:
            parts = imp.target.split(".")
            if parts[0] == "flowrl" and any(_is_private(p) for p in parts[1:]):
                found.append(
                    Violation(path, imp.line, f"imports the private flowrl name `{imp.target}`")
                )
            if parts[0] in stems - {path.stem}:
                found.append(
                    Violation(
                        path,
                        imp.line,
                        f"imports the example `{parts[0]}`: share "
                        "code through the flowrl package instead",
                    )
                )
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                name = _resolve(node, aliases)
                if name is not None and name.split(".")[0] == "flowrl":
                    parts = name.split(".")
                    if _is_private(parts[-1]) and not any(map(_is_private, parts[1:-1])):
                        found.append(
                            Violation(path, node.lineno, f"uses the private name `{name}`")
                        )
        found += _sys_path_edits(tree, path, aliases)
    return _unique(found)


def check_benchmarks(benchmarks_dir: Path) -> list[Violation]:
    """(e) A benchmark assigns to (or deletes, or `setattr`s) no attribute of a private
    module (`flowrl._critics.anything = ...`) and no private attribute of an imported module
    (`module._private = ...`)."""
    found = []
    for path in sorted(benchmarks_dir.glob("*.py")):
        tree = _parse(path)
        aliases = _aliases(_imports(tree, []))

        def report(name: str, line: int, how: str, path: Path = path) -> None:
            if any(_is_private(p) for p in name.split(".")):
                found.append(
                    Violation(path, line, f"{how} `{name}`: patches a private module or name")
                )

        for node in ast.walk(tree):
            line = getattr(node, "lineno", 0)
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, ast.Delete):
                    targets = node.targets
                else:
                    targets = [node.target]
                for target in _flat(targets):
                    if isinstance(target, ast.Attribute):
                        name = _resolve(target, aliases)
                        if name is not None:
                            how = "deletes" if isinstance(node, ast.Delete) else "assigns to"
                            report(name, line, how)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("setattr", "delattr")
                and len(node.args) >= 2
            ):
                obj = _resolve(node.args[0], aliases)
                attr = node.args[1]
                if obj is not None and isinstance(attr, ast.Constant):
                    report(f"{obj}.{attr.value}", line, f"{node.func.id}() on")
    return _unique(found)


def _unique(found: list[Violation]) -> list[Violation]:
    """One violation per file and line (the shortest message: `from a._b import c` reports
    `a._b`, not also `a._b.c`), in file and line order."""
    best: dict[tuple[Path, int], Violation] = {}
    for v in found:
        key = (v.path, v.line)
        if key not in best or len(v.message) < len(best[key].message):
            best[key] = v
    return sorted(best.values(), key=lambda v: (str(v.path), v.line))


def _report(rule: str, found: list[Violation]) -> str:
    return f"{rule}: {len(found)} violation(s)\n" + "\n".join(f"  {v}" for v in found)


# ---- the rules on this repository ----


def test_maths_modules_are_where_the_rules_expect():
    stems = {p.stem for p in maths_modules(SRC)}
    missing = [name for name in MATHS_NAMED if name not in stems]
    assert not missing, f"named maths modules missing from src/flowrl/: {missing}"


def test_maths_modules_import_only_the_numerics_stack():
    found = check_maths_imports(SRC)
    assert not found, _report("maths modules importing outside the numerics stack", found)


def test_data_does_not_import_experiment():
    found = check_data_independent_of_experiment(SRC)
    assert not found, _report("flowrl.data importing flowrl.experiment", found)


def test_src_imports_no_example_or_benchmark_and_leaves_sys_path():
    found = check_src_imports_no_scripts(SRC, [EXAMPLES, BENCHMARKS])
    assert not found, _report("src/ importing scripts or editing sys.path", found)


def test_examples_use_only_public_flowrl_and_no_other_example():
    found = check_examples(EXAMPLES)
    assert not found, _report("examples using private names, other examples or sys.path", found)


def test_benchmarks_patch_no_private_module():
    found = check_benchmarks(BENCHMARKS)
    assert not found, _report("benchmarks patching private modules or names", found)


# ---- each checker catches a planted violation ----


def _plant(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _lines(found: list[Violation], path: Path) -> list[int]:
    return sorted(v.line for v in found if v.path == path)


CLEAN_MATHS = """\
from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from . import _networks
from ._networks import MLP
"""


def test_check_maths_imports_catches_plants(tmp_path):
    src = tmp_path / "src"
    clean = _plant(src, "flowrl/_networks.py", CLEAN_MATHS)
    _plant(src, "flowrl/_version.py", "import os\n")  # not a maths module
    _plant(src, "flowrl/__init__.py", "import os\nfrom . import data, experiment\n")  # nor this
    _plant(src, "flowrl/experiment/_loop.py", "import tqdm\n")  # the host side may
    bad = _plant(
        src,
        "flowrl/_new.py",
        "import jax\n"
        "import ogbench\n"  # 2
        "from .experiment import Learner\n"  # 3
        "from . import experiment\n"  # 4
        "import flowrl.experiment\n"  # 5
        "from .data import Dataset\n"  # 6
        "def f():\n"
        "    import tqdm.auto\n"  # 8
        "    return __import__('wandb')\n"  # 9
        "from .. import other\n",  # 10
    )
    found = check_maths_imports(src)
    assert _lines(found, clean) == []
    assert _lines(found, bad) == [2, 3, 4, 5, 6, 8, 9, 10], "\n".join(map(str, found))
    assert all(v.path == bad for v in found)
    assert "ogbench" in str(next(v for v in found if v.line == 2))


def test_check_data_independent_of_experiment_catches_plants(tmp_path):
    src = tmp_path / "src"
    clean = _plant(src, "flowrl/data/_ok.py", "from .._flows import euler_sample\nimport numpy\n")
    bad = _plant(
        src,
        "flowrl/data/sub/_bad.py",
        "import flowrl.experiment\n"  # 1
        "from ...experiment import run\n"  # 2
        "from flowrl import experiment as fx\n"  # 3
        "from flowrl.experiment._loop import x\n",  # 4
    )
    bad_relative = _plant(src, "flowrl/data/_rel.py", "from .. import experiment\n")
    found = check_data_independent_of_experiment(src)
    assert _lines(found, clean) == []
    assert _lines(found, bad) == [1, 2, 3, 4], "\n".join(map(str, found))
    assert _lines(found, bad_relative) == [1]


def test_check_src_imports_no_scripts_catches_plants(tmp_path):
    src = tmp_path / "src"
    scripts = [tmp_path / "examples", tmp_path / "benchmarks"]
    _plant(tmp_path, "examples/rql_ogbench.py", "")
    _plant(tmp_path, "benchmarks/throughput.py", "")
    clean = _plant(src, "flowrl/_ok.py", "import sys\nprint(sys.path)\n")
    bad = _plant(
        src,
        "flowrl/experiment/_bad.py",
        "import sys\n"
        "import rql_ogbench\n"  # 2
        "from throughput import run\n"  # 3
        "import examples.rql_ogbench\n"  # 4
        "sys.path.insert(0, 'x')\n"  # 5
        "sys.path += ['y']\n"  # 6
        "import importlib\n"
        "importlib.import_module('benchmarks')\n",  # 8
    )
    found = check_src_imports_no_scripts(src, scripts)
    assert _lines(found, clean) == []
    assert _lines(found, bad) == [2, 3, 4, 5, 6, 8], "\n".join(map(str, found))


def test_check_examples_catches_plants(tmp_path):
    examples = tmp_path / "examples"
    clean = _plant(
        examples,
        "good.py",
        "import flowrl\nimport flowrl.experiment as fx\nfrom flowrl.data import Dataset\n"
        "print(flowrl.MLP, fx.run, flowrl.__version__)\n",
    )
    bad = _plant(
        examples,
        "bad.py",
        "from flowrl._critics import ensemble_mean\n"  # 1
        "import flowrl._flows\n"  # 2
        "from flowrl.experiment._loop import x\n"  # 3
        "import flowrl.experiment as fx\n"
        "import flowrl\n"
        "y = fx._private\n"  # 6
        "z = flowrl._critics.ensemble_mean\n"  # 7
        "import good\n"  # 8
        "import sys as system\n"
        "system.path.append('..')\n"  # 10
        "from flowrl import _expanded\n",  # 11
    )
    found = check_examples(examples)
    assert _lines(found, clean) == []
    assert _lines(found, bad) == [1, 2, 3, 6, 7, 8, 10, 11], "\n".join(map(str, found))


def test_check_benchmarks_catches_plants(tmp_path):
    benchmarks = tmp_path / "benchmarks"
    clean = _plant(
        benchmarks,
        "good.py",
        "import flowrl\nimport throughput\n"
        "class A:\n    def __init__(self):\n        self._x = 1\n"
        "throughput.rql_config = None\n"  # a public name of a public module
        "x = flowrl._critics\n",  # reading is not patching
    )
    bad = _plant(
        benchmarks,
        "bad.py",
        "import flowrl._critics as critics\n"
        "import flowrl\n"
        "from flowrl import _experiment as experiment\n"
        "critics._members_apply = None\n"  # 4
        "critics.jax = None\n"  # 5: any attribute of a private module
        "experiment.polyak_update = None\n"  # 6
        "flowrl._flows.euler_sample = None\n"  # 7
        "setattr(flowrl, '_x', 1)\n"  # 8
        "a, flowrl._y = 1, 2\n"  # 9
        "del critics._layer_norm\n",  # 10
    )
    found = check_benchmarks(benchmarks)
    assert _lines(found, clean) == []
    assert _lines(found, bad) == [4, 5, 6, 7, 8, 9, 10], "\n".join(map(str, found))
