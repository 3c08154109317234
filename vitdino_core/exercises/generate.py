"""Write the learner versions of the notebooks: `python -m vitdino_core.exercises.generate`.

The solution notebooks `notebooks/NN_topic.py` stay complete. Inside a function body, each
exercise's solution sits between nbgrader's markers, and the first line after the opening marker is
a comment that says the task in one line:

    def patchify_by_hand(images, patch):
        ### BEGIN SOLUTION
        # task: cut (B, C, H, W) into (B, N, C*p*p), patches in raster order, each channel-first
        ...
        ### END SOLUTION

Each exercise's markdown cell starts with a heading that the instructor's table is read from
(`--list`): `### Exercise `patchify` · difficulty 1 · 10 min`.

In `notebooks/exercises/NN_topic.py` the whole region becomes `raise NotImplementedError("<task>")`
at the marker's indentation, each cell that calls a `check_<name>(...)` gets the tag
`raises-exception` (nbval and JupyterLab's "Run All" go on past a failing check), and the title cell
says which file is the solution. Everything else is copied line for line.

The day's first notebook (`00_*.py`: set-up and data, no exercises) is copied beside them with a
line in its title cell that names its source, so that the lab's listing starts where the day does.

    python -m vitdino_core.exercises.generate            # (re)write notebooks/exercises/
    python -m vitdino_core.exercises.generate --check    # exit 1 if they differ from the solutions
    python -m vitdino_core.exercises.generate --list     # the table of exercises (markdown)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from vitdino_core.data import REPO_ROOT

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TASK = re.compile(r"^\s*# task: (?P<task>\S.*)$")
CELL = re.compile(r"^# %%(?P<rest>.*)$")
CHECK_CALL = re.compile(r"^check_\w+\(")
TAG = "raises-exception"
MAX_LINE = 100
# the heading of an exercise's markdown cell: ### Exercise `patchify` · difficulty 1 · 10 min
HEADING = re.compile(
    r"^# ### Exercise `(?P<name>\w+)` · difficulty (?P<difficulty>[123]) · (?P<minutes>\d+)"
    r" min\s*$",
    flags=re.M,
)
COPIED = ("00_",)  # notebooks copied beside the exercises when they have none
ASSERT_CHECKED = re.compile(r"assert_checked\(\[(?P<names>[^\]]*)\]")


class MarkerError(ValueError):
    """A solution notebook's markers are malformed; the message names the file and line."""


def stub_region(lines: list[str], start: int, where: str) -> tuple[str, int]:
    """The stub replacing the region opened at lines[start]; returns it and the index after END."""
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    if start + 1 >= len(lines) or not (m := TASK.match(lines[start + 1])):
        raise MarkerError(
            f"{where}:{start + 2}: the line after '{BEGIN}' must be '# task: <one line>'"
        )
    task = m["task"].strip().replace("\\", "\\\\").replace('"', '\\"')
    for j in range(start + 1, len(lines)):
        if lines[j].strip() == END:
            stub = f'{indent}raise NotImplementedError("{task}")'
            if len(stub) > MAX_LINE:
                raise MarkerError(
                    f"{where}:{start + 2}: the task makes a {len(stub)}-character stub line; "
                    f"shorten it to fit {MAX_LINE}"
                )
            return stub, j + 1
        if lines[j].strip() == BEGIN:
            break
    raise MarkerError(f"{where}:{start + 1}: '{BEGIN}' without its '{END}'")


def tag_cell(header: str) -> str:
    """Add `raises-exception` to a py:percent cell header such as `# %%` or `# %% tags=["x"]`."""
    rest = header[len("# %%") :]
    if TAG in rest:
        return header
    if (m := re.search(r"tags=\[(.*?)\]", rest)) is not None:
        tags = m.group(1).strip()
        new = f'tags=[{tags + ", " if tags else ""}"{TAG}"]'
        return "# %%" + rest[: m.start()] + new + rest[m.end() :]
    return f'# %%{rest} tags=["{TAG}"]'


def exercise_version(source: str, name: str, where: str = "") -> str:
    """The learner version of one solution notebook's text (py:percent)."""
    where = where or name
    lines = source.split("\n")
    out: list[str] = []
    cells: list[int] = []  # indices in `out` of code-cell headers
    check_cells: set[int] = set()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == BEGIN:
            stub, i = stub_region(lines, i, where)
            out.append(stub)
            continue
        if line.strip() == END:
            raise MarkerError(f"{where}:{i + 1}: '{END}' without its '{BEGIN}'")
        if (m := CELL.match(line)) and "[markdown]" not in m["rest"]:
            cells.append(len(out))
        elif CHECK_CALL.match(line) and cells:
            check_cells.add(cells[-1])
        out.append(line)
        i += 1
    for k in check_cells:
        out[k] = tag_cell(out[k])
    text = "\n".join(out)
    title = re.search(r"^# %% \[markdown\]\n# # .*$", text, flags=re.M)
    if title is None:
        raise MarkerError(f"{where}: no title cell ('# %% [markdown]' then '# # <title>')")
    banner = (
        "\n#\n# *Exercise version.* Write the functions marked `NotImplementedError`; each check"
        " cell\n# tells you what is wrong or that it passed. The complete notebook is"
        f" `../{name}`.\n# (Made by `make exercises` from it; edits here are yours, `make"
        " exercises` overwrites them.)"
    )
    return text[: title.end()] + banner + text[title.end() :]


def exercises_of(source: str) -> list[dict]:
    """The exercises a notebook announces: [{name, difficulty, minutes}, ...] in order."""
    return [
        {"name": m["name"], "difficulty": int(m["difficulty"]), "minutes": int(m["minutes"])}
        for m in HEADING.finditer(source)
    ]


def checked_names(source: str) -> list[str]:
    """The names listed in the notebook's `assert_checked([...])` call (empty if none)."""
    m = ASSERT_CHECKED.search(source)
    return re.findall(r"[\"'](\w+)[\"']", m["names"]) if m else []


def table(notebooks: Path) -> str:
    """A markdown table of every exercise: notebook, name, difficulty, minutes."""
    rows = ["| notebook | exercise | difficulty | minutes |", "|---|---|---|---|"]
    for path in sorted(notebooks.glob("[0-9][0-9]_*.py")):
        for ex in exercises_of(path.read_text(encoding="utf-8")):
            rows.append(f"| {path.stem} | `{ex['name']}` | {ex['difficulty']} | {ex['minutes']} |")
    return "\n".join(rows)


def has_exercises(path: Path) -> bool:
    return BEGIN in path.read_text(encoding="utf-8")


def is_copied(path: Path) -> bool:
    """The day's first notebook (`00_*.py`, no exercises) goes beside the exercises as it is."""
    return path.name.startswith(COPIED) and not has_exercises(path)


def copy_version(source: str, name: str, where: str = "") -> str:
    """The copy of a notebook without exercises: its text, one line added to the title cell."""
    title = re.search(r"^# %% \[markdown\]\n# # .*$", source, flags=re.M)
    if title is None:
        raise MarkerError(f"{where or name}: no title cell ('# %% [markdown]' then '# # <title>')")
    banner = (
        f"\n#\n# *No exercises here: this is `../{name}`, copied beside the exercises so that the"
        " day\n# starts in this folder. Run it from the top, then open `01_patch_embedding.py`.*"
    )
    return source[: title.end()] + banner + source[title.end() :]


def generate(notebooks: Path, out_dir: Path, write: bool = True) -> list[Path]:
    """Write (or, with write=False, compare) the learner version of every notebook with exercises,
    and the copy of the day's first notebook.

    Returns the exercise files that were written, or that differ from what would be written."""
    changed = []
    for path in sorted(notebooks.glob("[0-9][0-9]_*.py")):
        source = path.read_text(encoding="utf-8")
        if is_copied(path):
            text = copy_version(source, path.name, str(path))
        elif has_exercises(path):
            text = exercise_version(source, path.name, str(path))
        else:
            continue
        target = out_dir / path.name
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            changed.append(target)
            if write:
                out_dir.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notebooks", type=Path, default=REPO_ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=None, help="default: <notebooks>/exercises")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any file would change"
    )
    parser.add_argument(
        "--list", action="store_true", help="print a markdown table of the exercises"
    )
    args = parser.parse_args(argv)
    if args.list:
        print(table(args.notebooks))
        return 0
    out = args.out or args.notebooks / "exercises"
    try:
        changed = generate(args.notebooks, out, write=not args.check)
    except MarkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.check:
        for p in changed:
            print(f"out of date: {p} (run `make exercises`)", file=sys.stderr)
        return 1 if changed else 0
    print(
        f"wrote {len(changed)} exercise notebook(s) to {out}"
        + "".join(f"\n  {p.name}" for p in changed)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
