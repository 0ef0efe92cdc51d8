"""The README quickstart runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs():
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README has a ```python block under ## Quickstart"
    namespace: dict = {}
    exec(compile(blocks[0], "README quickstart", "exec"), namespace)
    assert namespace["rate"].slope < 0


def test_readme_names_the_two_commands():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_cmd = re.search(r"<!-- test-command -->\n```bash\n(.*?)\n```", text, flags=re.S).group(1).strip()
    assert test_cmd in ci, "the CI script runs the README's test command"
    assert re.search(r"<!-- main-command -->\n```bash\n.*reproduce.py --preset quick", text, flags=re.S)
