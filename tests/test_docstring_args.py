"""Every `Args:` entry of a public function's docstring names one of its parameters.

mkdocstrings (griffe, `warn_unknown_params`) warns on an entry that is no parameter, such as
`mask / lengths:` written for two, and `mkdocs build --strict` then fails; this finds it in a
second, without building the site.
"""

import glob
import importlib
import inspect
import os
import re

import jrnn

PACKAGE = os.path.dirname(jrnn.__file__)
MODULES = sorted([os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(PACKAGE, "*.py"))
                  if not os.path.basename(p).startswith("_")]
                 + [os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(PACKAGE, "*", "__init__.py"))])

ENTRY = re.compile(r"^(\*{0,2}[A-Za-z_][\w]*)\s*(?:\([^)]*\))?:(\s|$)")


def args_entries(doc):
    """The names of the entries of a Google-style docstring's `Args:` section."""
    lines = inspect.cleandoc(doc).splitlines()
    names = []
    for i, line in enumerate(lines):
        if line.strip() != "Args:":
            continue
        outer = len(line) - len(line.lstrip())
        indent = None
        for entry in lines[i + 1:]:
            if not entry.strip():
                continue
            depth = len(entry) - len(entry.lstrip())
            if depth <= outer:
                break                                   # the next section (Returns:, ...)
            indent = depth if indent is None else indent
            if depth == indent:
                names.append(entry.strip())
    return names


def public_callables():
    seen = set()
    for m in MODULES:
        mod = importlib.import_module(f"jrnn.{m}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            found = [(f"jrnn.{m}.{name}", obj)]
            if inspect.isclass(obj):
                found += [(f"jrnn.{m}.{name}.{k}", v) for k, v in vars(obj).items()
                          if inspect.isfunction(v) and not k.startswith("_")]
            for qual, fn in found:
                if inspect.isfunction(fn) and fn.__doc__ and id(fn) not in seen:
                    seen.add(id(fn))
                    yield qual, fn


def test_every_args_entry_of_a_public_docstring_names_a_parameter():
    bad = []
    for qual, fn in public_callables():
        params = inspect.signature(fn).parameters
        for entry in args_entries(fn.__doc__):
            m = ENTRY.match(entry)
            name = m.group(1).lstrip("*") if m else None
            if name not in params:
                bad.append(f"{qual}: {entry.split(':')[0]!r}")
    assert bad == [], "docstring Args entries that are no parameter (mkdocs --strict fails on them): " + "; ".join(bad)


def test_the_args_reader_finds_each_entry_and_not_the_continuation_lines():
    doc = """Summary.

    Args:
      x: the first, whose text
        runs on.
      mask / lengths: two at once.
      **deprecated: old keywords.

    Returns:
      y: not an argument.
    """
    assert args_entries(doc) == ["x: the first, whose text", "mask / lengths: two at once.", "**deprecated: old keywords."]
    assert ENTRY.match("mask / lengths: two at once.") is None
