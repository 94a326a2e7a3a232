"""The README's quick start: the two scripts it names exist and parse, and CI runs the test one."""

from __future__ import annotations

import re
import subprocess

from tests.support.processes import ROOT


def test_readme_quick_start_is_exactly_the_two_scripts_and_ci_runs_the_test_one() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert [c.strip() for c in commands] == ["bash scripts/run.sh", "bash scripts/test.sh"]
    assert (ROOT / "scripts" / "run.sh").is_file() and (ROOT / "scripts" / "test.sh").is_file()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci and ci.rstrip().endswith("bash scripts/test.sh")
    for script in ("scripts/run.sh", "scripts/test.sh", ".ci/run"):
        result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"
