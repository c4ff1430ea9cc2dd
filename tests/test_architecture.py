"""The package's shape (docs/design.md section 11): no import cycles, and no module imports from a layer above."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "turnrl"

LAYERS = [
    ["errors", "registry", "assets", "log", "stats", "records", "layout", "chat", "models", "sandbox"],
    ["generation", "tasks", "sources", "judge", "rewards.answers", "rewards.math_answers", "rewards.symbolic",
     "rewards.verdicts"],
    ["envs", "rewards", "filters"],
    ["algorithms", "rollout"],
    ["train"],
    ["stages"],
    ["workflows"],
    ["cli", "serve", "api"],
]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name or "__init__"] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """Every turnrl module ``path`` imports, at the top or inside a function; not those under ``if TYPE_CHECKING:``,
    which name a type for annotations and import nothing when the program runs."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree)
                 if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                 for stmt in block.body for n in ast.walk(stmt)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "turnrl":
            base = node.module.removeprefix("turnrl").lstrip(".")
            for alias in node.names:
                child = f"{base}.{alias.name}" if base else alias.name
                out.add(child if child in known else base)
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("turnrl.") for a in node.names if a.name.startswith("turnrl."))
    return {m for m in out if m in known}


def layer(module: str) -> int:
    """The layer of the most specific entry that names the module or a package above it."""
    best = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (index, name)
    if best is None:
        raise AssertionError(f"turnrl.{module} is in no layer of docs/design.md section 11; add it there and here")
    return best[0]


GRAPH = {m: imports(p, set(modules())) - {m} for m, p in modules().items() if m != "__init__"}


def test_every_module_has_a_layer():
    for module in GRAPH:
        layer(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_from_a_layer_above(module):
    above = sorted(m for m in GRAPH[module] if layer(m) > layer(module))
    assert not above, f"turnrl.{module} (layer {layer(module)}) imports from higher layers: {above}"


def test_no_import_cycles():
    """Depth-first search for a back edge; a package's __init__ importing its own submodules (to register them)
    while they import a sibling is fine, a submodule importing its package's __init__ back is not."""
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


RUN_DIR_PARTS = {"tasks", "rollouts", "scored", "branches", "filtered", "train", "eval", "plots", "export", "refresh",
                 "sweep", "lm-eval"}
RUN_DIR_FILES = {"results.json", "results.md", "results.csv", "comparison.json", "report.html", "per_question.jsonl",
                 "metrics.json", "run_config.json", "timings.json", "diagnostics.json", "train_log.jsonl",
                 "train_settings.json", "reference_logps.json", "evaluation.json", "conversations.jsonl", "seeds.json",
                 "skipped.json", "iterate.json", "summary.json"}
RUN_DIR_FOLDER_STARTS = ("seed", "iter_", "eval-")
"""f-strings that start a run directory's folder: seed<s>/, iter_<t>/, refresh/<algo>/round<r>/, eval-<split>/."""
NOT_RUN_DIR_PATHS = {
    ("stages/harness.py", "tasks"),  # the folder inside lm-eval/ that the harness's --include_path reads
    ("stages/harness.py", "results.json"),  # the harness's own results layout, inside lm-eval/
    ("train/loop.py", "train/"),  # the trackers' metric prefix
    ("workflows/iterate.py", "filtered/"),  # likewise
}


def test_run_directory_paths_are_spelled_in_the_layout_module_only():
    """A path into a run directory ("scored/...", run_dir / "eval", "results.md", f"seed{s}") spelled outside
    turnrl/layout.py (its RunDir and the relative names configs take); docstrings may describe the layout."""
    found = []
    for module, path in modules().items():
        if module == "layout":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        where = str(path.relative_to(PACKAGE))
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                    and isinstance(node.right.value, str) and node.right.value.split("/")[0] in RUN_DIR_PARTS:
                literal = node.right.value
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                    and ((node.value.split("/")[0] in RUN_DIR_PARTS | {"eval-"} and "/" in node.value)
                         or node.value.split("/")[-1] in RUN_DIR_FILES):
                literal = node.value
            elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                    and (node.values[0].value in RUN_DIR_FOLDER_STARTS
                         or str(node.values[0].value).split("/")[0] in RUN_DIR_PARTS):
                literal = f"f{str(node.values[0].value)!r}..."
            else:
                continue
            if (where, literal) not in NOT_RUN_DIR_PATHS:
                found.append(f"{where}:{node.lineno}: {literal!r}")
    assert not found, "run-directory paths outside turnrl/layout.py: " + ", ".join(found)


STEP_SCAFFOLD = {"gradient_sync", "idle_pass", "passes_in_step"}


def test_the_training_step_scaffold_is_written_once():
    """Micro-batch passes, idle passes, gradient synchronisation and the reduction live in
    turnrl/train/passes.py (``accumulate``); a trainer that calls the parts itself has a second copy."""
    found = []
    for module, path in modules().items():
        if module == "train.passes":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in STEP_SCAFFOLD:
                found.append(f"turnrl/{path.relative_to(PACKAGE)}:{node.lineno}: {node.func.id}")
    assert not found, "the step scaffold outside turnrl/train/passes.py:\n" + "\n".join(found)


def test_no_module_over_450_lines_but_the_sandbox():
    """A module that long mixes concerns; the sandbox (one process protocol, its limits and its tests' subject) is
    the exception docs/design.md names."""
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 450 and m != "sandbox"}
    assert not long, f"modules over 450 lines: {long}"


STATISTICS = {"sqrt", "std", "var", "quantile", "percentile", "sem", "bootstrap"}
"""Calls that compute a standard error or an interval: only stats.py makes them (docs/design.md section 9)."""
STATISTICS_ALLOWED = {"stats", "rewards.math_answers", "rewards.symbolic", "algorithms.swift"}
"""The math checker compares expressions that contain sqrt; Swift standardises rewards (000 eq. 9), not an SE."""


def test_statistics_are_defined_in_stats_only():
    found = []
    for module, path in modules().items():
        if module in STATISTICS_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in STATISTICS:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {name}()")
    assert not found, "statistics computed outside turnrl/stats.py: " + ", ".join(found)


ANSWER_READERS = {"rewards.answers", "rewards.math_answers"}


def test_answers_are_read_by_the_answer_rule_only():
    """A regular expression about an answer ("the answer is X", a boxed value) outside the two readers would be a
    second answer rule (docs/design.md section 6)."""
    found = []
    for module, path in modules().items():
        if module in ANSWER_READERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    isinstance(node.func.value, ast.Name) and node.func.value.id == "re" and node.args and \
                    isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) and \
                    any(word in node.args[0].value.lower() for word in ("answer", "boxed")):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.args[0].value!r}")
    assert not found, "answers read outside turnrl/rewards/answers.py and math_answers.py: " + ", ".join(found)
