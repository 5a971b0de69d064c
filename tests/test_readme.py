"""Every ```python block of README.md runs as written, in a fresh interpreter, from an empty folder.

A block may opt out only with a first line `# readme-test: skip (<why it cannot run here>)`, e.g.
a GPU-only example; the reason is required. A first line `# readme-test: slow` runs the block in
the full suite only.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = re.compile(r"#\s*readme-test:\s*skip\b(.*)")
SLOW = re.compile(r"#\s*readme-test:\s*slow\b")   # runs in the full suite only


def python_blocks(text):
    """(line number, code) of every ```python fenced block."""
    return [(text[: m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)]


with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    BLOCKS = python_blocks(f.read())


def test_the_readme_has_python_blocks_and_the_extractor_finds_them():
    assert len(BLOCKS) >= 1
    text = "intro\n```python\nx = 1\n```\ntext\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = 2\n")]


def first_line(code):
    """A block's first non-blank line, where its `# readme-test:` marker stands."""
    return code.lstrip().splitlines()[0] if code.strip() else ""


@pytest.mark.parametrize("line, code", [
    pytest.param(n, c, marks=pytest.mark.slow if SLOW.match(first_line(c)) else ())
    for n, c in BLOCKS], ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_python_block_runs(line, code, tmp_path):
    first = first_line(code)
    skip = SKIP.match(first)
    if skip:
        reason = skip.group(1).strip(" ():-")
        assert reason, f"README.md:{line}: a skipped block must say why it cannot run"
        pytest.skip(f"README.md:{line}: {reason}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}   # no test-suite x64 etc.
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, f"README.md:{line} failed:\n{p.stderr[-3000:]}"
