"""Every Python snippet in README.md and docs/*.md runs, so the docs cannot rot.

The blocks of one page run in order in one fresh Python process (later
blocks see earlier ones' names), in a temporary working directory.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGES = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path):
    with open(path, encoding="utf-8") as f:
        return BLOCK.findall(f.read())


def test_the_docs_have_snippets():
    assert sum(len(python_blocks(page)) for page in PAGES) >= 3


@pytest.mark.tensorflow_only
@pytest.mark.parametrize(
    "page", [p for p in PAGES if python_blocks(p)], ids=lambda p: os.path.relpath(p, REPO)
)
def test_snippets_run(page, tmp_path):
    source = "\n\n".join(python_blocks(page))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", source],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{page}:\n{result.stderr[-4000:]}"
