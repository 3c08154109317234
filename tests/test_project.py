"""The project's own wiring: one dependency list in two files, and one test command for CI and the
README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

try:
    import tomllib  # Python 3.11+
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
CONDA_TO_PIP = {"pytorch": "torch"}
CONDA_ONLY = {"python", "pip"}
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def parse_requirement(spec: str) -> tuple[str, str | None]:
    """'torch>=2.4' -> ('torch', '2.4'); the name normalised, the lower bound (>=, == or conda's =)
    or None."""
    match = REQUIREMENT.match(spec)
    assert match, f"cannot read the requirement {spec!r}"
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    bound = re.search(r"(?:>=|==|~=|(?<![<>!=~])=)\s*([0-9][^\s,;]*)", match.group(2))
    return name, bound.group(1) if bound else None


def pyproject_requirements() -> dict[str, str | None]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project.get("dependencies", [])) + list(
        project.get("optional-dependencies", {}).get("dev", [])
    )
    return dict(parse_requirement(s) for s in specs)


def conda_requirements() -> dict[str, str | None]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    reqs = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):  # a nested `pip:` list holds pip names already
            reqs.update(parse_requirement(s) for s in entry.get("pip", []))
            continue
        name, bound = parse_requirement(str(entry))
        if name not in CONDA_ONLY:
            reqs[CONDA_TO_PIP.get(name, name)] = bound
    return reqs


def test_requirement_parser():
    assert parse_requirement("torch>=2.4") == ("torch", "2.4")
    assert parse_requirement("scikit_learn >= 1.2, <2") == ("scikit-learn", "1.2")
    assert parse_requirement("pyyaml=6.0") == ("pyyaml", "6.0")
    assert parse_requirement("tqdm") == ("tqdm", None)
    assert parse_requirement("numpy<3") == ("numpy", None)


def test_environment_yml_mirrors_pyproject():
    pip, conda = pyproject_requirements(), conda_requirements()
    assert "torch" in pip and "pytest" in pip  # both lists were really read
    assert sorted(pip) == sorted(conda), (
        f"only in pyproject: {set(pip) - set(conda)}; only in environment.yml:"
        f" {set(conda) - set(pip)}"
    )
    mismatched = {name: (pip[name], conda[name]) for name in pip if pip[name] != conda[name]}
    assert not mismatched, f"lower bounds differ (pyproject, environment.yml): {mismatched}"


def test_ci_runs_make_test():
    ci = REPO / ".ci" / "run"
    assert ci.is_file(), ".ci/run is missing: CI would run no test"
    assert ci.stat().st_mode & 0o111, ".ci/run is not executable"
    commands = [
        line.strip()
        for line in ci.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert any(re.match(r"^(exec\s+)?make\s+test\b", c) for c in commands), (
        ".ci/run does not call `make test`"
    )
    assert re.search(r"^test:", (REPO / "Makefile").read_text(), re.MULTILINE), (
        "the Makefile has no `test` target"
    )


def test_readme_gives_the_ci_test_command():
    """README CHECK: the README's test command is the one .ci/run calls (`make test`).

    This fails while README.md does not exist yet: the README is part of the project, not optional.
    """
    readme = REPO / "README.md"
    assert readme.is_file(), "README.md is missing"
    assert "make test" in readme.read_text(), "README.md does not give the test command `make test`"


def test_native_stderr_silenced_hides_fd_level_output_only_while_active(capfd):
    import os

    from vitdino_core.notebook import native_stderr_silenced

    with native_stderr_silenced():
        os.write(2, b"from C++\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    try:
        with native_stderr_silenced():
            raise ValueError("still raised")
    except ValueError as e:
        assert str(e) == "still raised"
    os.write(2, b"restored\n")
    assert capfd.readouterr().err == "restored\n"


def test_relative_links_in_the_docs_resolve():
    """Every relative link and image in the project's Markdown files points at a file or folder that
    exists."""
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    docs = [REPO / f for f in tracked] or sorted(REPO.glob("**/*.md"))
    assert REPO / "README.md" in docs
    broken = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not re.match(r"[a-z]+://|mailto:", target) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, broken


# ----------------------------------------------------------------------------- the package's layers

COMMANDS = {
    "train",
    "evaluate",
    "sanity",
    "notebook",
    "exercises",
}  # commands and notebook helpers: the top


def layer(module: str) -> int:
    """0: the notebook-named modules and what they stand on (data/, checkpoint, ...); 1: training/;
    2: commands."""
    first = module.split(".")[1] if module.count(".") else ""
    return 2 if first in COMMANDS else 1 if first == "training" else 0


def package_imports(repo_root: Path) -> list[tuple[str, str]]:
    """(importer, imported) for every import of a vitdino_core module inside vitdino_core, relative
    or absolute."""
    import ast

    pairs = []
    for path in sorted((repo_root / "vitdino_core").rglob("*.py")):
        parts = path.relative_to(repo_root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = list(package[: len(package) - node.level + 1]) if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            pairs += [(name, t) for t in targets if t.startswith("vitdino_core.")]
    return pairs


def test_no_import_points_upward(repo_root):
    """The notebook-named modules never import training/ or a command; training/ never imports a
    command."""
    pairs = package_imports(repo_root)
    assert (
        "vitdino_core.training.trainer",
        "vitdino_core.vision_transformer",
    ) in pairs  # the walk sees relative imports
    assert ("vitdino_core.data.imagenette", "vitdino_core.data.datasets") in pairs
    upward = [f"{a} -> {b}" for a, b in pairs if layer(b) > layer(a)]
    assert not upward, upward
