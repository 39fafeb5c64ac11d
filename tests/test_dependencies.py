"""dvc.yaml declares every library module whose change can change a stage's outputs, so `dvc status` never calls a
stale result up to date; modules that only decide how a stage runs are listed once below, with the reason."""

from __future__ import annotations

import ast
import copy
import itertools
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from wdlab.settings import REGULARIZERS
from wdlab.workspace import ROOT, load_params

# Imported by stages, yet no change to them can change what a stage computes. Everything else in wdlab/ that a
# stage's entry point imports, directly or through other modules, must be among its `deps` in dvc.yaml.
PLUMBING = {
    "wdlab/__init__.py": "the package's docstring",
    "wdlab/cifar10/__init__.py": "the package's docstring",
    "wdlab/synthetic/__init__.py": "the package's docstring",
    "wdlab/stage.py": "command line, logging, signals and the one-line error of every stage",
    "wdlab/errors.py": "the exception types of those one-line errors",
    "wdlab/startup.py": "when the garbage collector runs while a stage imports",
    "wdlab/progress.py": "progress bars at a terminal",
    "wdlab/files.py": "atomic writes and checked reads; the values written are computed elsewhere",
    "wdlab/settings.py": "validates params.yaml; the values themselves are each stage's `params`",
    "wdlab/tracking.py": "what reaches MLflow (the `tracking` params are no stage's either)",
    "wdlab/lineage.py": "which data MLflow records a run read: names, digests and recipes, no value a stage writes",
    "wdlab/executor.py": "where a grid's runs happen (local or Ray), never what they compute",
    "wdlab/runcache.py": "keeps the finished runs of an interrupted stage, so a rerun trains only the rest",
}


def module_path(name: str) -> Path | None:
    """The file of a project module ('wdlab.cifar10.data' → wdlab/cifar10/data.py), None outside the project."""
    if not name.startswith(("wdlab", "stages")):
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(ROOT)
    return None


def imported_modules(path: Path) -> Iterator[str]:
    """Every module `path` imports, at the top or inside functions; `if TYPE_CHECKING:` blocks import nothing."""
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)  # `from wdlab import stage`


def import_closure(entry: Path) -> set[str]:
    """The project files `entry` needs, itself included, with each package's __init__ on the way: everything it
    imports, directly or through other modules, plumbing included (settings.py imports regularizers.py, whose rules
    decide which params a stage accepts)."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path.as_posix() in seen:
            continue
        seen.add(path.as_posix())
        for name in imported_modules(path):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                if (found := module_path(".".join(parts[:depth]))) is not None:
                    todo.append(found)
    return seen


def foreach_keys(foreach: str | list) -> list[str]:
    """The members of a `foreach`: a list's items, or the keys of the params.yaml mapping `${a.b}` names."""
    if isinstance(foreach, list):
        return foreach
    node = load_params()
    for key in foreach.removeprefix("${").removesuffix("}").split("."):
        node = node[key]
    return list(node)


def stage_definitions(pipeline: Mapping) -> Iterator[tuple[str, dict]]:
    """Each stage of dvc.yaml with its `cmd`, `deps` and `outs`, a foreach member as `name@key` with ${key} filled in,
    a matrix member as `name@v1-v2` (its values in the matrix's order) with ${item.<axis>} filled in."""
    for name, stage in pipeline["stages"].items():
        if "foreach" in stage:
            keys = foreach_keys(stage["foreach"])
            assert keys, f"{name}: its foreach has no members"
            for key in keys:
                yield f"{name}@{key}", filled(stage["do"], {"${key}": key, "${item}": key})
        elif "matrix" in stage:
            axes = {axis: foreach_keys(values) for axis, values in stage["matrix"].items()}
            body = {k: v for k, v in stage.items() if k != "matrix"}
            for values in itertools.product(*axes.values()):
                members = {f"${{item.{axis}}}": value for axis, value in zip(axes, values)}
                yield f"{name}@{'-'.join(values)}", filled(body, members)
        else:
            yield name, filled(stage, {})


def filled(body: Mapping, values: Mapping[str, str]) -> dict:
    """A stage body with each ${...} of `values` replaced in its cmd, deps and outs (an out's path, not its options)."""

    def fill(text: str) -> str:
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        return text

    outs = [fill(next(iter(out)) if isinstance(out, Mapping) else out) for out in body.get("outs", [])]
    return {"cmd": fill(body["cmd"]), "deps": [fill(dep) for dep in body.get("deps", [])], "outs": outs}


def entry_point(cmd: str) -> Path:
    program, flag, module, *_ = shlex.split(cmd)
    assert (program, flag) == ("python", "-m"), f"stage command {cmd!r} is not `python -m <module>`"
    found = module_path(module)
    assert found is not None, f"{module} is not a module of this project"
    return found


def dependency_gaps(pipeline: Mapping) -> dict[str, dict[str, set[str]]]:
    """Per stage: the modules it imports but does not declare ('missing'), and the project modules it declares but
    never imports ('stale', reruns for nothing). Empty when dvc.yaml is right."""
    gaps = {}
    for name, stage in stage_definitions(pipeline):
        imported = {
            path for path in import_closure(entry_point(stage["cmd"])) if not path.startswith("stages/__init__")
        }
        declared = {dep for dep in stage["deps"] if dep.endswith(".py")}
        # plumbing may still be declared where it is what a stage computes (the validation stage's rules)
        missing, stale = imported - PLUMBING.keys() - declared, declared - imported
        if missing or stale:
            gaps[name] = {"missing": missing, "stale": stale}
    return gaps


def grid_foreach(pipeline: Mapping) -> str | list:
    return pipeline["stages"]["train_synthetic"]["foreach"]


@pytest.fixture(scope="module")
def pipeline() -> dict:
    return YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())


def test_every_stage_declares_the_modules_that_change_its_outputs(pipeline):
    assert dependency_gaps(pipeline) == {}


def test_a_missing_declaration_is_found(pipeline):
    """The check can fail: drop one result-changing import from a stage's deps and it is named."""
    broken = copy.deepcopy(pipeline)
    grid = broken["stages"]["train_synthetic"]["do"]
    grid["deps"] = [dep for dep in grid["deps"] if dep != "wdlab/synthetic/training.py"]  # the grids' own list only
    gaps = dependency_gaps(broken)
    assert set(gaps) == {f"train_synthetic@{key}" for key in foreach_keys(grid_foreach(pipeline))}
    assert set(gaps) == {f"train_synthetic@{name}" for name in REGULARIZERS}
    assert all(gap == {"missing": {"wdlab/synthetic/training.py"}, "stale": set()} for gap in gaps.values())


def test_the_plumbing_list_names_real_modules():
    assert all((ROOT / path).is_file() for path in PLUMBING), "PLUMBING names a module that no longer exists"


def test_every_registry_artifact_is_a_stage_output(pipeline):
    """dvc.yaml's `artifacts:` (the model registry) names files a stage writes, so `dvc artifacts get` finds them
    in DVC's cache."""
    outs = [Path(out) for _, stage in stage_definitions(pipeline) for out in stage["outs"]]
    artifacts = pipeline.get("artifacts", {})
    assert artifacts, "dvc.yaml registers no artifact"
    for name, artifact in artifacts.items():
        path = Path(artifact["path"])
        assert any(path == out or out in path.parents for out in outs), f"{name}: {path} is no stage's output"
        assert artifact.get("type") and artifact.get("desc"), f"{name}: give it a type and a desc"


def test_a_module_reached_only_through_plumbing_is_followed(pipeline):
    """validate imports no rule itself: settings.py (plumbing) imports regularizers.py, which decides what is valid.
    A change there must make the stage out of date, so the closure goes through plumbing."""
    direct = {module_path(name) for name in imported_modules(Path("stages/validate.py"))} - {None}
    assert Path("wdlab/regularizers.py") not in direct
    assert "wdlab/regularizers.py" in import_closure(Path("stages/validate.py"))
    broken = copy.deepcopy(pipeline)
    validate = broken["stages"]["validate"]
    validate["deps"] = [dep for dep in validate["deps"] if dep != "wdlab/regularizers.py"]
    assert dependency_gaps(broken) == {"validate": {"missing": {"wdlab/regularizers.py"}, "stale": set()}}
