"""The learner notebooks in notebooks/exercises/ are generated from the solution notebooks: they are
up to date, they hold no solution, their check cells may fail, and each notebook proves its
checks ran."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jupytext
import pytest

import vitdino_core.exercises as ex
from vitdino_core.exercises.generate import (
    BEGIN,
    END,
    TAG,
    MarkerError,
    checked_names,
    exercise_version,
    exercises_of,
    generate,
    main,
)

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
EXERCISE_DIR = NOTEBOOK_DIR / "exercises"
WITH_EXERCISES = sorted(
    p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.py") if BEGIN in p.read_text(encoding="utf-8")
)

SOLUTION = '''# %% [markdown]
# # 01 · A title
#
# Some text.

# %%
def double(x):
    """Twice x."""
    y = 2
    ### BEGIN SOLUTION
    # task: return "x" times two
    return y * x
    ### END SOLUTION

# %%
check_double(double)

# %% tags=["keep"]
check_other(double)
'''


def test_the_exercise_notebooks_are_up_to_date():
    """Regenerate in memory and compare: after editing a solution notebook, run `make exercises`."""
    stale = generate(NOTEBOOK_DIR, EXERCISE_DIR, write=False)
    assert not stale, f"out of date, run `make exercises`: {[p.name for p in stale]}"
    assert main(["--check"]) == 0


def test_every_exercise_notebook_has_its_solution():
    made = sorted(p.name for p in EXERCISE_DIR.glob("[0-9][0-9]_*.py"))
    first = sorted(p.name for p in NOTEBOOK_DIR.glob("00_*.py"))
    assert first and made == sorted(first + [p.name for p in WITH_EXERCISES])
    assert {
        "01_patch_embedding.py",
        "02_attention.py",
        "03_vision_transformer.py",
        "04_multicrop.py",
    } <= set(made)


def test_a_region_becomes_a_stub_with_its_task_and_check_cells_are_tagged():
    out = exercise_version(SOLUTION, "01_a.py")
    assert 'raise NotImplementedError("return \\"x\\" times two")' in out
    assert "return y * x" not in out and BEGIN not in out and END not in out
    assert "    y = 2" in out  # code outside the markers stays
    assert f'# %% tags=["{TAG}"]\ncheck_double(double)' in out
    assert f'# %% tags=["keep", "{TAG}"]\ncheck_other(double)' in out
    assert "../01_a.py" in out.split("\n# %%")[0]  # the title cell names the solution
    nb = jupytext.reads(out, fmt="py:percent")
    with pytest.raises(NotImplementedError, match="times two"):
        namespace = {}
        exec(nb.cells[1].source, namespace)
        namespace["double"](3)


def test_the_days_first_notebook_sits_with_the_exercises_unchanged_but_for_one_line():
    """The lab's listing starts at 00: notebook 00 (no exercises) is copied into exercises/ with a
    line in its title cell; every cell and every line of code is the solution notebook's."""
    for solution in NOTEBOOK_DIR.glob("00_*.py"):
        assert BEGIN not in solution.read_text(encoding="utf-8")
        copy = EXERCISE_DIR / solution.name
        original = jupytext.read(solution, fmt="py:percent")
        copied = jupytext.read(copy, fmt="py:percent")
        assert [c.source for c in copied.cells[1:]] == [c.source for c in original.cells[1:]]
        assert copied.cells[0].source.startswith(original.cells[0].source.split("\n")[0])
        assert f"../{solution.name}" in copied.cells[0].source
        assert "01_patch_embedding.py" in copied.cells[0].source  # where to go next


def test_a_notebook_without_exercises_is_copied_only_if_it_is_the_first(tmp_path):
    (tmp_path / "00_setup.py").write_text("# %% [markdown]\n# # 00 · Set-up\n\n# %%\nx = 1\n")
    (tmp_path / "01_a.py").write_text(SOLUTION, encoding="utf-8")
    (tmp_path / "09_more.py").write_text("# %% [markdown]\n# # 09 · More\n\n# %%\ny = 2\n")
    assert main(["--notebooks", str(tmp_path)]) == 0
    out = tmp_path / "exercises"
    assert sorted(p.name for p in out.iterdir()) == ["00_setup.py", "01_a.py"]
    assert (
        "x = 1" in (out / "00_setup.py").read_text()
        and "NotImplementedError" not in (out / "00_setup.py").read_text()
    )
    assert main(["--notebooks", str(tmp_path), "--check"]) == 0
    (out / "00_setup.py").write_text("edited", encoding="utf-8")
    assert main(["--notebooks", str(tmp_path), "--check"]) == 1


@pytest.mark.parametrize(
    "broken, message",
    [
        (
            SOLUTION.replace('    # task: return "x" times two\n', ""),
            "must be '# task: <one line>'",
        ),
        (SOLUTION.replace("    ### END SOLUTION\n", ""), "without its"),
        (
            SOLUTION.replace('    ### BEGIN SOLUTION\n    # task: return "x" times two\n', ""),
            "without its",
        ),
        (SOLUTION.replace("times two", "times two" + " and more" * 10), "shorten it"),
        (SOLUTION.replace("# # 01 · A title", "no title"), "no title cell"),
    ],
)
def test_malformed_markers_are_refused_with_the_line(broken, message):
    with pytest.raises(MarkerError, match=re.escape(message)):
        exercise_version(broken, "01_a.py")


def test_check_mode_reports_drift(tmp_path):
    (tmp_path / "01_a.py").write_text(SOLUTION, encoding="utf-8")
    out = tmp_path / "exercises"
    assert main(["--notebooks", str(tmp_path), "--check"]) == 1  # nothing generated yet
    assert main(["--notebooks", str(tmp_path)]) == 0
    assert main(["--notebooks", str(tmp_path), "--check"]) == 0
    (out / "01_a.py").write_text("edited", encoding="utf-8")
    assert main(["--notebooks", str(tmp_path), "--check"]) == 1


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.stem)
def test_each_exercise_is_announced_checked_picked_and_counted(path):
    source = path.read_text(encoding="utf-8")
    announced = exercises_of(source)
    names = [e["name"] for e in announced]
    assert names, "an exercise heading: ### Exercise `<name>` · difficulty <1-3> · <minutes> min"
    assert source.count(BEGIN) == source.count(END) == len(names), "one marked region per exercise"
    assert source.count("<details><summary>Hint</summary>") == len(names), (
        "one collapsed hint per exercise"
    )
    assert all(1 <= e["minutes"] <= 45 for e in announced)
    for name in names:
        assert hasattr(ex, f"check_{name}"), f"no check_{name} in vitdino_core.exercises"
        assert re.search(rf"^check_{name}\(", source, flags=re.M), (
            f"check_{name}(...) is never called"
        )
        assert f'pick("{name}"' in source, f"later cells should use pick({name!r}, ...)"
    nb = jupytext.read(path, fmt="py:percent")
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert last.source.startswith("assert_checked("), "the last code cell proves every check ran"
    assert checked_names(source) == names


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.stem)
def test_the_learner_version_holds_no_solution(path):
    solution = path.read_text(encoding="utf-8")
    learner = (EXERCISE_DIR / path.name).read_text(encoding="utf-8")
    regions = re.findall(rf"{re.escape(BEGIN)}\n(.*?){re.escape(END)}", solution, flags=re.S)
    for region in regions:
        for line in region.splitlines()[1:]:  # the task line is shown as the stub's message
            if line.strip() and len(line.strip()) > 12:
                assert line not in learner, f"solution line left in the exercise: {line.strip()}"
    nb = jupytext.read(EXERCISE_DIR / path.name, fmt="py:percent")
    code = [c for c in nb.cells if c.cell_type == "code"]
    ast.parse("\n".join(c.source for c in code))
    checks = [c for c in code if re.match(r"check_\w+\(", c.source)]
    assert len(checks) == len(regions) and all(TAG in c.metadata.get("tags", []) for c in checks)
    assert learner.count("raise NotImplementedError(") == len(regions)


@pytest.mark.parametrize(
    "path",
    WITH_EXERCISES + sorted(EXERCISE_DIR.glob("[0-9][0-9]_*.py")),
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_exercise_notebooks_keep_lines_short(path):
    long = [
        i
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if len(line) > 100
    ]
    assert not long, f"lines over 100 characters: {long[:10]}"


def test_the_lab_opens_each_notebook_once_and_as_a_notebook():
    """`make lab`: python files open with jupytext's notebook view, and no .ipynb copy is listed."""
    import fnmatch
    import json

    root = NOTEBOOK_DIR.parent
    config = EXERCISE_DIR / ".jupyter"
    overrides = json.loads((config / "labconfig" / "default_setting_overrides.json").read_text())
    assert (
        overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["python"]
        == "Jupytext Notebook"
    )
    hidden = json.loads((config / "jupyter_server_config.json").read_text())["ContentsManager"][
        "hide_globs"
    ]
    assert any(fnmatch.fnmatch("01_patch_embedding.ipynb", g) for g in hidden)
    assert not any(fnmatch.fnmatch(p.name, g) for g in hidden for p in EXERCISE_DIR.glob("*.py"))
    formats = re.search(r'^formats\s*=\s*"([^"]*)"', (root / "jupytext.toml").read_text(), re.M)[1]
    assert "ipynb" not in formats, "pairing would write an .ipynb beside every .py the lab saves"
    recipe = (root / "Makefile").read_text().split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "JUPYTER_CONFIG_PATH=$(CURDIR)/notebooks/exercises/.jupyter" in recipe
    assert "--LabApp.default_url=/lab/tree/exercises/README.md" in recipe
    assert "--ServerApp.root_dir=notebooks" in recipe


def test_the_lab_opens_on_the_participants_page_and_the_instructors_page_is_apart():
    """`make lab` opens exercises/README.md, a page for participants (where to start, checks,
    outputs, kernels, solutions); the page listing every mistake each check names is
    INSTRUCTOR.md, linked from the README and the site."""
    root = NOTEBOOK_DIR.parent
    recipe = (root / "Makefile").read_text().split("\nlab:", 1)[1].split("\n\n", 1)[0]
    url = re.search(r"--LabApp\.default_url=/lab/tree/(\S+)", recipe)[1]
    start = NOTEBOOK_DIR / url  # root_dir is notebooks/
    assert start == EXERCISE_DIR / "README.md" and start.is_file()
    page = start.read_text(encoding="utf-8")
    assert page.startswith("# Start here")
    for needed in ["00_setup_and_data.py", "Run All", "../NN_topic.py", "kernel", "Hint"]:
        assert needed in page, f"the participant's page does not mention {needed!r}"
    for nb in sorted(EXERCISE_DIR.glob("[0-9][0-9]_*.py")):
        assert f"`{nb.stem}`" in page, f"the participant's page does not list {nb.stem}"
    # the instructor's table of mistakes is not on it
    assert "the check names" not in page and "| diff. |" not in page
    instructor = (EXERCISE_DIR / "INSTRUCTOR.md").read_text(encoding="utf-8")
    assert "| nb | exercise: write | diff. | min | the check names |" in instructor
    assert "(README.md)" in instructor  # it points to the participant's page
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "(notebooks/exercises/INSTRUCTOR.md)" in readme
    assert "(notebooks/exercises/README.md)" in readme
    import importlib.util

    spec = importlib.util.spec_from_file_location("site_pages", root / "docs" / "site_pages.py")
    if importlib.util.find_spec("sphinx") is not None:
        site_pages = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(site_pages)
        assert "notebooks/exercises/INSTRUCTOR.md" in site_pages.INCLUDE
        assert site_pages.copies() == ["notebooks/exercises/00_setup_and_data.py"]


def test_the_lab_closes_kernels_with_their_tabs_and_shows_markdown_rendered():
    """Nine open notebooks keep nine kernels (0.6-0.8 GB each) unless closing a tab shuts its kernel
    down; a README opens as a page, not as source. The keys are JupyterLab's own (its schema)."""
    import json
    import sys

    overrides = json.loads(
        (EXERCISE_DIR / ".jupyter" / "labconfig" / "default_setting_overrides.json").read_text()
    )
    assert overrides["@jupyterlab/notebook-extension:tracker"]["kernelShutdown"] is True
    viewers = overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers["markdown"] == "Markdown Preview"
    schema = (
        Path(sys.prefix) / "share/jupyter/lab/schemas/@jupyterlab/notebook-extension/tracker.json"
    )
    assert "kernelShutdown" in json.loads(schema.read_text())["properties"]
