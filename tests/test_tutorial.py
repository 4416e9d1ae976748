"""docs/tutorial.md: its python blocks run in order, in one namespace, and the learner they
build picks the better mode of the bandit."""

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"


def test_tutorial_builds_a_learner_that_picks_the_better_mode(capsys):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) >= 7
    scope: dict = {"__name__": "tutorial"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/tutorial.md (python block {i + 1})", "exec"), scope)
    assert scope["better"] >= 0.9, scope["better"]
    assert scope["chunk"].shape == (1, 1)
    first, last = (r["success"] for r in scope["record"].eval)
    assert first <= 0.6 and last >= 0.9, (first, last)  # the driver's run learns too
    out = capsys.readouterr().out
    assert "4096 2 1" in out and "picks the better mode" in out
