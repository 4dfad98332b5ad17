"""The documentation site (mkdocs.yml, docs/): every page's python blocks run as written, the site
builds with ``mkdocs build --strict``, the API reference covers every public name, and every public
name has a docstring with an example (whose ``>>>`` lines run)."""

import doctest
import importlib.util
import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)  # as tests/test_readme.py
# pymdownx.snippets: a line ``--8<-- "PATH"`` is replaced by the file PATH (relative to the root)
_SNIPPET = re.compile(r'^[ \t]*--8<--[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)


def python_blocks(text):
    """Bodies of the ```python fenced blocks in ``text``, in order."""
    return _FENCE.findall(text)


def page_text(path: pathlib.Path) -> str:
    """A page as mkdocs renders it: its snippet lines replaced by the files they name."""
    return _SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8"), path.read_text(encoding="utf-8"))


PAGES = sorted(DOCS.rglob("*.md"))
PAGE_IDS = [p.relative_to(DOCS).as_posix() for p in PAGES]


def test_snippet_expansion():
    (page,) = [p for p in PAGES if p.name == "porting.md"]
    assert "braintrace top-level names" in page_text(page)  # PORTING.md, transcluded


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_page_blocks_run_in_order(page, tmp_path, monkeypatch):
    """Each page reads as one program: a block may use the names of the blocks above it. Files the
    code writes land in a temporary directory."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs"}
    for index, block in enumerate(python_blocks(page_text(page))):
        exec(compile(block, f"docs/{page.relative_to(DOCS).as_posix()}[python block {index}]", "exec"), namespace)


def test_tutorials_have_code():
    for name in ("getting-started.md", "concepts.md", "tutorials/rate-rnn.md", "tutorials/spiking.md",
                 "tutorials/custom-primitive.md", "tutorials/which-algorithm.md", "tutorials/cli.md"):
        assert python_blocks(page_text(DOCS / name)), name


_QUOTE = re.compile(r"<!-- quoted from benchmarks/RESULTS.md -->\n(.*?)<!-- end quote -->", re.DOTALL)


def test_quoted_benchmark_numbers_are_in_results():
    """Measured numbers are quoted, not invented: every line between the page's quote markers is a
    line of benchmarks/RESULTS.md (re-quote the table when the benchmarks are rerun)."""
    results = {line.strip() for line in (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8").splitlines()}
    quoted = 0
    for page in PAGES:
        for block in _QUOTE.findall(page.read_text(encoding="utf-8")):
            for line in filter(str.strip, block.splitlines()):
                assert line.strip() in results, f"{page.name}: not in benchmarks/RESULTS.md: {line}"
                quoted += 1
    assert quoted > 10


# -- the site builds --------------------------------------------------------------------------------

def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        pytest.skip("mkdocs / mkdocstrings not installed: pip install -e '.[docs]' (the README's test command does)")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(MKDOCS_YML),
                           "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # mkdocs-material's banner
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (site / "api" / "etprop" / "index.html").read_text(encoding="utf-8")
    for name in ("etprop.matmul", "etprop.compile", "etprop.D_RTRL"):
        assert f'id="{name}"' in api, name


# -- the API reference and the docstrings -----------------------------------------------------------

def _public():
    import etprop
    import etprop.nn
    out = [(f"etprop.{n}", getattr(etprop, n)) for n in etprop.__all__]
    out += [(f"etprop.nn.{n}", getattr(etprop.nn, n)) for n in etprop.nn.__all__]
    return out


def _resolve(path: str):
    """The object a ``::: path`` line of an API page renders."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def test_api_reference_covers_every_public_name():
    documented = []
    for page in (DOCS / "api").glob("*.md"):
        documented += re.findall(r"^::: (\S+)", page.read_text(encoding="utf-8"), re.MULTILINE)
    rendered = [_resolve(path) for path in documented]
    missing = [name for name, obj in _public() if not any(obj is r for r in rendered)]
    assert not missing, f"not in docs/api/*.md (add a '::: NAME' line): {missing}"
    import etprop.nn.surrogate
    assert any(r is etprop.nn.surrogate for r in rendered)


# examples to be added with the algorithms' docstrings (etprop/algorithms/*, etprop/errors.py are
# being edited elsewhere): these names have docstrings but no example yet
NO_EXAMPLE_YET = {
    "etprop.OnlineAlgorithm", "etprop.D_RTRL", "etprop.ES_D_RTRL", "etprop.HybridDimVjpAlgorithm",
    "etprop.EProp", "etprop.OSTLRecurrent", "etprop.OSTLFeedforward", "etprop.ThreeFactor", "etprop.SnAp",
    "etprop.UORO", "etprop.RTRL", "etprop.BPTT", "etprop.DNI", "etprop.SyntheticGradient",
    "etprop.train_synthetic_gradient", "etprop.RuleConfig", "etprop.rule",
    "etprop.EtpropError", "etprop.NotSupportedError", "etprop.CompilationError", "etprop.OperandError",
    "etprop.ArgumentError", "etprop.NumericalError",
}


def has_example(doc: str) -> bool:
    """A ``>>>`` doctest, a fenced code block, or a reST literal block (a line ending in ``::``
    that is not a directive such as ``.. math::``, followed by an indented line)."""
    if ">>>" in doc or "```" in doc:
        return True
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if s.endswith("::") and not s.startswith(".."):
            indent = len(line) - len(line.lstrip())
            rest = [ln for ln in lines[i + 1:] if ln.strip()]
            if rest and len(rest[0]) - len(rest[0].lstrip()) > indent:
                return True
    return False


def test_has_example_detector():
    assert has_example("f.\n\n>>> f(1)\n2\n")
    assert has_example("f.\n\nExample::\n\n    f(1)\n")
    assert not has_example("f.\n\n.. math::\n\n    y = x\n")
    assert not has_example("f.\n\nReturns the value.\n")


def test_every_public_name_has_a_docstring_and_an_example():
    no_doc = [name for name, obj in _public() if not (inspect.getdoc(obj) or "").strip()]
    assert not no_doc, f"public names without a docstring: {no_doc}"
    no_example = [name for name, obj in _public() if name not in NO_EXAMPLE_YET and not has_example(inspect.getdoc(obj))]
    assert not no_example, f"public names whose docstring has no example: {no_example}"


def test_docstring_examples_run():
    """The ``>>>`` examples of the public names' own docstrings (not their members') pass as doctests."""
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    ran = 0
    for name, obj in _public():
        doc = inspect.getdoc(obj) or ""
        if ">>>" not in doc:
            continue
        test = parser.get_doctest(doc, {"__name__": "doctest"}, name, None, 0)
        runner.run(test)
        ran += 1
    results = runner.summarize(verbose=False)
    assert ran > 0
    assert results.failed == 0, f"{results.failed} docstring example(s) failed (output above)"
