# Sphinx configuration of the course's website: `make site` builds it into build/site/.
#
# The source directory is the repository itself (sphinx-build -c docs . build/site), so every
# relative link in the READMEs and notebooks means on the site what it means in the repository.
# The pages are found by file name (site_pages.py), never listed here by hand: a new
# notebooks/NN_topic.py gets its page, its exercise page and its place in the navigation.
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS))

# docs/site_pages.py: pages, banners, links, checks; importable only once DOCS is on sys.path
import site_pages  # noqa: E402

# the notebooks run in fast mode, as under CI: fewer steps and images, every cell
os.environ.setdefault("VITDINO_FAST", "1")
os.environ.setdefault("CI", "true")
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

project = "vitdino"
author = "vitdino contributors"
copyright = "vitdino contributors, MIT licence"
html_title = "ViT + DINO from scratch"

extensions = ["myst_nb", "site_pages"]
root_doc = "README"
include_patterns = site_pages.INCLUDE
exclude_patterns = [
    ".git",
    ".venv",
    ".venv-*",
    "build",
    "dist",
    "data/imagenette*",
    "data/dino",
    "checkpoints/*/",
    "**/.ipynb_checkpoints",
    *site_pages.copies(),
]

# notebooks/NN_topic.py are jupytext percent files; myst-nb reads them through jupytext
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
source_suffix = {".md": "myst-nb", ".py": "myst-nb"}
nb_execution_mode = "cache"  # a notebook runs again only when its source changed
nb_execution_cache_path = str(ROOT / "build" / "site-cache")
nb_execution_timeout = 1800
# the exercise pages show the learner's version as it opens: stubs and hints, no outputs (running
# them would only repeat the complete notebooks' work, with the core's functions standing in)
nb_execution_excludepatterns = ["notebooks/exercises/*"]
nb_execution_raise_on_error = (
    True  # a failing cell fails the build (cells tagged raises-exception may raise)
)
nb_execution_show_tb = True
nb_merge_streams = True
# tqdm.auto draws widgets in JupyterLab; a static page shows their text and loads no widget scripts
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [
    ("html", "application/vnd.jupyter.widget-view+json", None),
    ("html", "application/vnd.jupyter.widget-state+json", None),
]

myst_enable_extensions = ["dollarmath", "amsmath", "html_image"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# maths: MathJax served by the site itself (build/mathjax, from npm's mathjax package), no CDN
mathjax_path = "mathjax/tex-chtml.js"
mathjax3_config = {"tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]}}
html_static_path = [str(site_pages.mathjax_dir()), "static"]
html_css_files = ["site.css"]

html_theme = "sphinx_book_theme"
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "show_toc_level": 2,
}
html_context = {"default_mode": "light"}  # pydata-sphinx-theme logs a console error without one
html_last_updated_fmt = None
html_show_sphinx = False
pygments_style = "sphinx"
suppress_warnings = ["mystnb.unknown_mime_type"]
