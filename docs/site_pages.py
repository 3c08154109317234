"""The course website's pages, found by file name, and what each page says at its top.

A Sphinx extension used by docs/conf.py:
- PAGES: which repository files become pages (notebooks/NN_topic.py, their exercise versions,
  the READMEs of the course, the benchmarks and the checkpoint); a new notebook needs no edit here;
- the navigation: a hidden table of contents appended to the landing page (README.md);
- a banner at the top of each page: how to run it locally, its source file, and for a notebook
  the link to its exercise version and back;
- links to folders or non-page files of the repository go to a copy served by the site (_src/);
- after the build every internal link, image and anchor of every page is checked: a broken one
  is one warning line (`broken link: PAGE -> TARGET (...)`) and the build fails.
"""

from __future__ import annotations

import html
import os
import posixpath
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from docutils import nodes
from sphinx import addnodes
from sphinx.errors import SphinxError
from sphinx.util import logging

ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger("site_pages")

NOTEBOOK = re.compile(r"^notebooks/(\d\d_[A-Za-z0-9_]+)$")
EXERCISE = re.compile(r"^notebooks/exercises/(\d\d_[A-Za-z0-9_]+)$")
# SITE_NOTEBOOKS="0[01]" builds the pages of notebooks 00 and 01 only (to try a change quickly)
NN = os.environ.get("SITE_NOTEBOOKS", "[0-9][0-9]")
INCLUDE = [
    "README.md",
    f"notebooks/{NN}_*.py",
    "notebooks/exercises/README.md",
    "notebooks/exercises/INSTRUCTOR.md",
    f"notebooks/exercises/{NN}_*.py",
    "benchmarks/README.md",
    "benchmarks/PERFORMANCE.md",
    "benchmarks/results/*/README.md",
    "checkpoints/README.md",
    "data/README.md",
]
SRC = "_src"  # raw copies of source files and linked folders inside the built site
RUN_LOCALLY = (
    "<code>make lab</code> (the first time it creates <code>.venv</code> and installs everything), "
    "and the data once: <code>python -m vitdino_core.data download imagenette-96</code>"
)


def mathjax_dir() -> Path:
    """The folder whose mathjax/ holds MathJax 3 (`make site-mathjax` puts npm's package there)."""
    static = ROOT / "build" / "site-static"
    if not (static / "mathjax" / "tex-chtml.js").is_file():
        raise SphinxError(
            f"MathJax not found in {static / 'mathjax'}: run `make site` "
            "(it installs npm's mathjax@3 there; needs npm)"
        )
    return static


def docnames(pattern: str) -> list[str]:
    """Docnames (paths without suffix) of the repository files matching `pattern`, sorted."""
    return sorted(str(p.relative_to(ROOT).with_suffix("")) for p in ROOT.glob(pattern))


def copies() -> list[str]:
    """Exercise-folder notebooks without exercises (notebook 00, copied there for the lab): the
    site shows them once, as the complete notebook's page."""
    return sorted(
        str(p.relative_to(ROOT))
        for p in ROOT.glob("notebooks/exercises/[0-9][0-9]_*.py")
        if "NotImplementedError" not in p.read_text(encoding="utf-8")
    )


def navigation() -> str:
    """The landing page's hidden table of contents, made from the file list."""

    def toctree(caption: str, names: list[str]) -> str:
        entries = "\n".join("/" + name for name in names)
        return f"\n\n```{{toctree}}\n:hidden:\n:caption: {caption}\n\n{entries}\n```\n"

    exercises = (
        docnames("notebooks/exercises/README.md")
        + docnames("notebooks/exercises/INSTRUCTOR.md")
        + [d for d in docnames(f"notebooks/exercises/{NN}_*.py") if d + ".py" not in copies()]
    )
    more = (
        docnames("benchmarks/README.md")
        + docnames("benchmarks/PERFORMANCE.md")
        + docnames("checkpoints/README.md")
        + docnames("data/README.md")
    )
    return (
        toctree("Notebooks", docnames(f"notebooks/{NN}_*.py"))
        + toctree("Exercises", exercises)
        + toctree("Benchmarks, checkpoint, data", more)
    )


def on_source_read(app, docname: str, source: list[str]) -> None:
    if docname == app.config.root_doc:
        source[0] += navigation()
    elif docname == "benchmarks/README":  # each results folder's README, under the benchmarks' page
        entries = "\n".join("/" + d for d in docnames("benchmarks/results/*/README.md"))
        source[0] += f"\n\n```{{toctree}}\n:hidden:\n\n{entries}\n```\n"


def on_env_get_outdated(app, env, added, changed, removed) -> list[str]:
    """The pages whose navigation is made from the file list are read again at every build."""
    return [d for d in (app.config.root_doc, "benchmarks/README") if d in env.found_docs]


def source_path(app, docname: str) -> str:
    """Repository path of a page's source file, e.g. notebooks/07_attention_maps.py."""
    return Path(app.env.doc2path(docname)).relative_to(ROOT).as_posix()


def to_src(docname: str, path: str) -> str:
    """Relative URL, from page `docname`, of the site's copy of repository path `path`."""
    return posixpath.relpath(f"{SRC}/{path}", posixpath.dirname(docname) or ".")


def on_doctree_read(app, doctree) -> None:
    """A link to a repository folder (e.g. results/) that is no page points at the site's copy."""
    docname = app.env.docname
    linked = app.env.site_linked_dirs if hasattr(app.env, "site_linked_dirs") else set()
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("reftype") != "myst" or node.get("refdomain"):
            continue
        target = node["reftarget"].split("#")[0]
        folder = (ROOT / posixpath.dirname(docname) / target).resolve()
        if not target or not folder.is_dir() or ROOT not in folder.parents:
            continue
        rel = folder.relative_to(ROOT).as_posix()
        linked.add(rel)
        ref = nodes.reference("", "", internal=True, refuri=to_src(docname, rel) + "/index.html")
        ref += node.children
        node.replace_self(ref)
    app.env.site_linked_dirs = linked


def on_env_merge(app, env, docnames, other) -> None:
    env.site_linked_dirs = getattr(env, "site_linked_dirs", set()) | getattr(
        other, "site_linked_dirs", set()
    )


def banner(app, docname: str) -> str:
    """The lines at the top of a page: how to run it locally, its source, its twin page."""
    uri = app.builder.get_relative_uri
    src = source_path(app, docname)
    src_link = f'<a class="site-source" href="{to_src(docname, src)}"><code>{src}</code></a>'
    nb, ex = NOTEBOOK.match(docname), EXERCISE.match(docname)
    lines = []
    if nb or ex:
        topic = (nb or ex).group(1)
        if nb:
            lines.append(
                f"This page is {src_link}, run top to bottom in fast mode (<code>VITDINO_FAST=1"
                "</code>: fewer steps and images than a full run, every cell)."
            )
        else:
            lines.append(
                f"This page is {src_link}, the learner's version as it opens: the functions "
                "to write, their hints and their checks, before any cell has run."
            )
        lines.append(
            f"Run it yourself: {RUN_LOCALLY}; then open <code>{src.removeprefix('notebooks/')}"
            "</code> in JupyterLab (a double-click opens the <code>.py</code> as a notebook)."
        )
        twin = f"notebooks/exercises/{topic}" if nb else f"notebooks/{topic}"
        if twin in app.env.all_docs:
            label = "the exercise version" if nb else "the complete notebook"
            kind = "site-exercise-link" if nb else "site-solution-link"
            lines.append(
                f'See also <a class="{kind}" href="{uri(docname, twin)}">{label}</a>'
                f" (<code>{twin}.py</code>)."
            )
    else:
        lines.append(f"This page is {src_link}.")
        lines.append(f"Run the course yourself: {RUN_LOCALLY}.")
    body = "".join(f"<p>{line}</p>" for line in lines)
    return (
        '<div class="admonition note site-banner"><p class="admonition-title">Run it'
        f" locally</p>{body}</div>"
    )


def on_doctree_resolved(app, doctree, docname: str) -> None:
    if app.builder.format != "html":
        return
    node = nodes.raw("", banner(app, docname), format="html")
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is not None and section.children and isinstance(section[0], nodes.title):
        section.insert(1, node)
    else:
        doctree.insert(0, node)


class _Links(HTMLParser):
    """Every href/src of a page, and every id it defines."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        for key in ("href", "src"):
            if a.get(key) and tag in ("a", "img", "link", "script", "source", "iframe"):
                self.links.append(a[key])


def copy_sources(app, outdir: Path) -> None:
    """Copy each page's source file and each linked folder into _src/ (folders get an index)."""
    for docname in app.env.found_docs:
        src = source_path(app, docname)
        (outdir / SRC / src).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / src, outdir / SRC / src)
    for rel in sorted(getattr(app.env, "site_linked_dirs", set())):
        for folder, subdirs, files in os.walk(ROOT / rel):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith((".", "__")))
            here = Path(folder).relative_to(ROOT).as_posix()
            (outdir / SRC / here).mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copyfile(Path(folder) / f, outdir / SRC / here / f)
            items = [
                f'<li><a href="{html.escape(d)}/index.html">{html.escape(d)}/</a></li>'
                for d in subdirs
            ]
            items += [
                f'<li><a href="{html.escape(f)}">{html.escape(f)}</a></li>' for f in sorted(files)
            ]
            (outdir / SRC / here / "index.html").write_text(
                f"<!doctype html><meta charset='utf-8'><title>{here}/</title>"
                f"<h1><code>{here}/</code></h1><ul>{''.join(items)}</ul>\n"
            )


def check_links(outdir: Path) -> list[str]:
    """`PAGE -> TARGET (why)` for each internal link, image or anchor of the site
    that leads nowhere."""
    pages: dict[Path, _Links] = {}
    for page in sorted(outdir.rglob("*.html")):
        if page.relative_to(outdir).parts[0] == "_static":  # the theme's templates, not pages
            continue
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        pages[page] = parser
    broken = []
    for page, parser in pages.items():
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
                continue
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            where = page.relative_to(outdir).as_posix()
            if not target.is_file() or outdir.resolve() not in target.resolve().parents:
                broken.append(f"{where} -> {link} (no such file in the site)")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else set()
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where} -> {link} (no such anchor)")
    return broken


def on_build_finished(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    copy_sources(app, outdir)
    broken = check_links(outdir)
    for line in broken:  # with -W (make site) each one fails the build
        logger.warning(f"broken link: {line}", type="site", subtype="link")


def setup(app):
    app.connect("source-read", on_source_read)
    app.connect("env-get-outdated", on_env_get_outdated)
    app.connect("doctree-read", on_doctree_read)
    app.connect("env-merge-info", on_env_merge)
    app.connect("doctree-resolved", on_doctree_resolved)
    app.connect("build-finished", on_build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
