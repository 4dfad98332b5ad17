"""Every ```python block of README.md runs as written."""

import pathlib
import re


README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text):
    """Bodies of the ```python fenced blocks in ``text``, in order."""
    return _FENCE.findall(text)


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_extractor_finds_python_blocks_only():
    text = "intro\n```python\na = 1\n```\n```bash\nexit 1\n```\n```python\nb = 2\nc = 3\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = 2\nc = 3\n"]


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


def test_readme_blocks_run_in_order():
    """The README reads as one tutorial: each block may use names from the blocks above."""
    namespace = {"__name__": "readme"}
    for index, block in enumerate(BLOCKS):
        exec(compile(block, f"README.md[python block {index}]", "exec"), namespace)
