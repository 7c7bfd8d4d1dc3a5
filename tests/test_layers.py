"""Imports run one way: each module of cmift imports only its own stage or the ones below, so
the package reads as a flow (config at the bottom, the command line on top)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cmift"
# bottom to top; a module may import any module of its own layer or a lower one
LAYERS = [
    # faults: the hooks every stage calls; ranks: this process's place in a data-parallel run
    {"cmift.lazy", "cmift.faults", "cmift.ranks", "cmift.data.tasks"},
    {"cmift.config"},
    # mixtures: the mixing rules and TaskPGM's energy (NumPy); their training is in training/
    {"cmift.data", "cmift.models", "cmift.objectives", "cmift.tuning", "cmift.mixtures"},
    {"cmift.runs", "cmift.loggers"},
    {"cmift.training", "cmift.dropout"},  # dropout: the Fisher is a pass over training data
    {"cmift.report"},
    {"cmift.cli", "cmift.__main__"},
]


def layer(module: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or
                                                                len(p) > best[1]):
                best = (i, len(p))
    assert best is not None, module
    return best[0]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cmift"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cmift")}
    return found


def test_imports_never_go_up_a_layer():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        if module == "cmift":
            continue
        for target in imports(path):
            if target != "cmift" and layer(target) > layer(module):
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_the_config_path_never_imports_torch():
    """Specs live beside their (torch) losses; reading them must not import torch, so --help
    and config errors answer fast."""
    import subprocess
    import sys

    code = ("import sys; from conftest import compose; "
            "from cmift.config.identity import run_name; from cmift.config.validate import "
            "validate; cfg = compose('objective=ncmi', 'model=tiny'); validate(cfg); "
            "run_name(cfg, []); m = compose('mixture=taskpgm', 'mixture.tasks=[mrpc,rte]'); "
            "validate(m); run_name(m, []); print(sorted(m for m in ('torch', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
