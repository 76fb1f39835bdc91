"""The layout the design card draws: the card's files at the root, scripts that nothing imports, lower layers that
never reach up, no import circle (imports inside functions count too), and boot.py on torch and einops alone."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARD = {"boot.py", "test_boot.py", "train_toy.py", "train_sd.py", "requirements.txt", "README.md"}
MAX_ROOT_FILES = 12
# Where a local module is found, as the scripts and tests put them on the path.
SEARCH = (ROOT, ROOT / "bench", ROOT / "teachers", ROOT / "tests")


def tracked_files() -> list:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [ROOT / line for line in listed.splitlines()]


def local_module(name: str):
    """The file of a module of this repository (bootkit.x, boot, a script), or None for a library."""
    parts = name.split(".")
    for base in SEARCH:
        for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate.resolve()
    return None


def imports(path: Path) -> set:
    """The local modules path imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {m for m in map(local_module, names) if m is not None and m != path.resolve()}
    return found


def is_script(path: Path) -> bool:
    return 'if __name__ == "__main__"' in path.read_text()


def code_files() -> list:
    """Every Python file of the project but the tests."""
    return [p.resolve() for p in tracked_files() if p.suffix == ".py" and not p.name.startswith(("test_", "conftest"))]


def test_the_root_holds_the_cards_files_and_a_handful_more():
    root = sorted(p.name for p in tracked_files() if p.parent == ROOT and not p.name.startswith("."))
    assert CARD <= set(root)
    assert len(root) <= MAX_ROOT_FILES, root


def test_no_module_imports_a_script():
    for path in code_files():
        scripts = [m.relative_to(ROOT) for m in imports(path) if is_script(m)]
        assert not scripts, f"{path.relative_to(ROOT)} imports the scripts {scripts}"


def test_no_import_circle():
    graph = {path: imports(path) for path in code_files()}

    def reaches(start, goal, seen):
        return any(m == goal or (m not in seen and reaches(m, goal, seen | {m})) for m in graph.get(start, ()))
    for path in graph:
        assert not reaches(path, path, {path}), f"{path.relative_to(ROOT)} imports itself through others"


def test_the_shared_package_never_reaches_up_into_scripts_benchmark_or_teachers():
    for path in (ROOT / "bootkit").glob("*.py"):
        for module in imports(path):
            assert module.parent in (ROOT / "bootkit", ROOT) and not is_script(module), (path.name, module)
    assert imports(ROOT / "boot.py") == set(), "boot.py is the bottom layer"


def test_boot_py_needs_torch_and_einops_only():
    tree = ast.parse((ROOT / "boot.py").read_text())
    top = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert top - set(sys.stdlib_module_names) == {"torch", "einops"}
