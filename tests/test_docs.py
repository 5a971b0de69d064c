"""The documentation: every ```python block of README.md and docs/*.md runs as written, in a fresh
interpreter, from an empty folder; every public name has a docstring; the README stays short and
its summary quotes the generated tables; the built site has its pages and its links resolve.

A block may opt out only with a first line `# readme-test: skip (<why it cannot run here>)`, e.g.
a GPU-only example; the reason is required. A first line `# readme-test: slow` runs the block in
the full suite only. A first line `# readme-test: needs torch` (any importable name) skips the
block where that package is not installed (an optional dependency, e.g. PyTorch for
`jrnn.interop`). The default suite runs README.md's blocks; every docs page's blocks run in the
full suite (`-m "slow or not slow"`, as CI runs it): each is a fresh interpreter that imports JAX
and compiles its own programs, together about two minutes of the default suite's budget.
"""

import ast
import glob
import html.parser
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import urllib.parse

import pytest

import jrnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = re.compile(r"#\s*readme-test:\s*skip\b(.*)")
SLOW = re.compile(r"#\s*readme-test:\s*slow\b")   # runs in the full suite only
NEEDS = re.compile(r"#\s*readme-test:\s*needs\s+([A-Za-z_]\w*)")   # runs where that package imports
PAGES = ["README.md", *sorted(os.path.relpath(p, ROOT).replace(os.sep, "/")
                              for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))]


def python_blocks(text):
    """(line number, code) of every ```python fenced block."""
    return [(text[: m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)]


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


BLOCKS = [(name, n, code) for name in PAGES for n, code in python_blocks(read(name))]


def test_the_docs_have_python_blocks_and_the_extractor_finds_them():
    assert {name for name, _, _ in BLOCKS} >= {"README.md", "docs/getting-started.md", "docs/models.md"}
    text = "intro\n```python\nx = 1\n```\ntext\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = 2\n")]


def first_line(code):
    """A block's first non-blank line, where its `# readme-test:` marker stands."""
    return code.lstrip().splitlines()[0] if code.strip() else ""


@pytest.mark.parametrize("name, line, code", [
    pytest.param(name, n, c, marks=pytest.mark.slow if SLOW.match(first_line(c)) or name != "README.md" else ())
    for name, n, c in BLOCKS], ids=[f"{name}:{n}" for name, n, _ in BLOCKS])
def test_docs_python_block_runs(name, line, code, tmp_path):
    first = first_line(code)
    skip = SKIP.match(first)
    if skip:
        reason = skip.group(1).strip(" ():-")
        assert reason, f"{name}:{line}: a skipped block must say why it cannot run"
        pytest.skip(f"{name}:{line}: {reason}")
    needs = NEEDS.match(first)
    if needs and importlib.util.find_spec(needs.group(1)) is None:
        pytest.skip(f"{name}:{line}: needs {needs.group(1)}, which is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}   # no test-suite x64 etc.
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, f"{name}:{line} failed:\n{p.stderr[-3000:]}"


def test_a_block_that_needs_a_missing_package_is_skipped_not_failed(tmp_path):
    code = "# readme-test: needs jrnn_no_such_package\nimport jrnn_no_such_package\n"
    with pytest.raises(pytest.skip.Exception, match="needs jrnn_no_such_package, which is not installed"):
        test_docs_python_block_runs("docs/x.md", 3, code, tmp_path)


# ---- the README ---------------------------------------------------------------------------------

def test_the_readme_is_short():
    assert len(read("README.md").splitlines()) <= 250, "the README is the front page: details go to docs/"


SUMMARY = "<!-- summary table: numbers quoted from the generated tables of the linked pages -->"
REGION = re.compile(r"<!-- report:begin ([\w-]+) -->(.*?)<!-- report:end \1 -->", re.S)


@pytest.mark.parametrize("name", ["README.md", "docs/index.md"])
def test_the_summary_quotes_the_generated_tables_of_the_pages_it_links(name):
    """Each decimal number of a summary row's "measured" column appears in a generated table (between report markers)
    of the page the row links: regenerated tables that change a number fail here until the summary
    follows."""
    text = read(name)
    assert SUMMARY in text
    rows = text.split(SUMMARY, 1)[1].strip("\n").split("\n\n", 1)[0].splitlines()[2:]
    assert len(rows) == 5
    base = os.path.dirname(name)
    for row in rows:
        target = re.search(r"\]\(([^)#]+)(?:#[^)]*)?\) \|$", row).group(1)
        tables = " ".join(body for _, body in REGION.findall(read(os.path.normpath(os.path.join(base, target)))))
        measured = row.split(" | ")[1]       # the "measured" column; the bars are targets, not measurements
        for number in re.findall(r"\d+\.\d+x?", measured):
            assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", tables), f"{name}: {number} not in {target}"


def test_the_home_page_summary_is_the_readmes():
    def summary(t):
        return re.sub(r"\]\((docs/)?", "](", t.split(SUMMARY, 1)[1].split("\n\n", 1)[0])
    assert summary(read("README.md")) == summary(read("docs/index.md"))


# ---- the API reference --------------------------------------------------------------------------

MODULES = sorted([os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "jrnn", "*.py"))
                  if not os.path.basename(p).startswith("_")]
                 + [os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(ROOT, "jrnn", "*", "__init__.py"))])
SHAPE = re.compile(r"\[(?:\]|\.\.\.|\*|[A-Z0-9]|[a-z]\d)")   # [T, B, H], [..., H], [*batch_shape, H], [k2, NB], []
# names whose arguments and results are not arrays of a fixed layout (a pytree of any structure,
# files, sizes, settings): their docstrings need no shapes
NO_SHAPES = {
    "optim": "optax transformations over any params pytree",
    "checkpoint": "whole training states of any structure, files",
    "testing": "any pytrees",
    "checks.integer": "a scalar argument", "checks.boolean": "a scalar argument", "checks.real": "a scalar argument",
    "checks.traced_ids_in_range": "ids of any shape", "checks.host_ints_fit": "any pytree",
    "data.cache_dir": "a folder", "data.corpus_path": "a file", "data.load_text": "text",
    "data.decode_text": "text", "data.build_vocab": "text", "data.bucket_length": "a length",
    "cells.get": "a cell by name", "cells.sigmoid": "elementwise",
    "elman.model": "a model value", "elman.model_of": "a model value", "elman.cell": "a cell value",
    "elman_scan.linearization": "a cell's linearization", "lm.model": "a model value",
    "model.make": "a model value", "hoisted.batch_split": "a tracing context", "hoisted.Linearization": "functions",
    "parallel.auto_method": "a method name", "rnn.default_unroll": "an integer",
    "rnn.FullBPTT": "a strategy value", "rnn.Remat": "a strategy value", "tbptt.TBPTT": "a strategy value",
    "parallel.Parallel": "a strategy value", "parallel.Auto": "a strategy value",
    "distributed.batch_mesh": "a device mesh", "train.with_precision": "a function", "distributed.to_host": "any pytree",
    "initializers": "the shape is an argument",
}


def public_names():
    """(qualified name, object, module) of every name in jrnn.__all__ and each module's __all__."""
    out = [(f"jrnn.{n}", getattr(jrnn, n), jrnn) for n in jrnn.__all__]
    for m in MODULES:
        mod = importlib.import_module(f"jrnn.{m}")
        assert hasattr(mod, "__all__"), f"jrnn.{m} has no __all__: its public names are not declared"
        out += [(f"jrnn.{m}.{n}", getattr(mod, n), mod) for n in mod.__all__]
    return out


def attribute_docstring(mod, name):
    """The string literal right after `name = ...` at a module's top level (what mkdocstrings shows)."""
    tree = ast.parse(inspect.getsource(mod))
    for node, after in zip(tree.body, tree.body[1:]):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                return after.value.value
    return None


def docstring(obj, mod, name):
    if inspect.ismodule(obj):
        return obj.__doc__
    if inspect.isclass(obj) or inspect.isfunction(obj) or hasattr(obj, "__wrapped__") or callable(obj) \
            and not isinstance(obj, tuple):
        doc = obj.__doc__
        if inspect.isclass(obj) and issubclass(obj, tuple) and doc and doc.startswith(f"{obj.__name__}("):
            return None   # the namedtuple's generated docstring
        return doc
    return attribute_docstring(mod, name)


def test_every_public_name_has_a_docstring_with_shapes_where_it_takes_arrays():
    missing, shapeless = [], []
    for qual, obj, mod in public_names():
        doc = docstring(obj, mod, qual.rsplit(".", 1)[1])
        if not doc or not doc.strip():
            missing.append(qual)
            continue
        short = qual[len("jrnn."):]
        exempt = (inspect.ismodule(obj) or inspect.isclass(obj) and issubclass(obj, (Exception, Warning))
                  or short in NO_SHAPES or short.split(".")[0] in NO_SHAPES or "." not in short)
        if not exempt and not SHAPE.search(doc):
            shapeless.append(qual)
    assert missing == [], f"public names without a docstring: {missing}"
    assert shapeless == [], f"docstrings without shapes ([T, B, H], [..., H]): {shapeless}"


def test_every_module_has_an_api_page_in_the_nav():
    nav = read("mkdocs.yml")
    for m in MODULES:
        assert f"api/{m}.md" in nav and f"::: jrnn.{m}" in read(f"docs/api/{m}.md"), m


def test_the_version_is_single_sourced():
    assert jrnn.__version__ == importlib.metadata.version("jrnn")
    pyproject = read("pyproject.toml")
    assert 'dynamic = ["version"]' in pyproject and 'version = {attr = "jrnn.__version__"}' in pyproject
    assert f"## {jrnn.__version__} - " in read("CHANGELOG.md")


# ---- the built site -----------------------------------------------------------------------------

class Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key])


@pytest.mark.slow
def test_the_built_site_has_its_pages_and_every_internal_link_resolves(tmp_path):
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    pages = {os.path.relpath(f, site): f for f in glob.glob(str(site / "**" / "*.html"), recursive=True)
             if os.path.relpath(f, site) != "404.html"}   # served from any depth: its links are site-absolute
    for page in ("index.html", "api/model/index.html", "benchmarks/index.html", "getting-started/index.html"):
        assert page in pages, page
    def text(rel):
        with open(pages[rel], encoding="utf-8") as f:
            return f.read()
    model_page = text("api/model/index.html")
    assert 'id="jrnn.model.Model"' in model_page and "[T, ..., V]" in model_page
    bench_page = text("benchmarks/index.html")
    assert "img/bench_cpu.svg" in bench_page and "best peer / best jrnn" in bench_page
    parsed = {}
    for rel, path in pages.items():
        parsed[rel] = Links()
        parsed[rel].feed(text(rel))
    broken = []
    for rel, links in parsed.items():
        for link in links.links:
            url = urllib.parse.urlparse(link)
            if url.scheme or url.netloc or link.startswith(("mailto:", "data:")):
                continue
            target = os.path.normpath(os.path.join(os.path.dirname(rel), urllib.parse.unquote(url.path))) \
                if url.path else rel
            if url.path.endswith("/") or url.path in ("", ".", "./") or os.path.isdir(site / target):
                target = os.path.join(target, "index.html") if url.path else rel
            if not (site / target).exists():
                broken.append(f"{rel}: {link}")
            elif url.fragment and target.endswith(".html") and target in parsed \
                    and urllib.parse.unquote(url.fragment) not in parsed[target].ids:
                broken.append(f"{rel}: {link} (no such anchor)")
    assert broken == [], broken
