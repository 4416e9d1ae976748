"""The docs cover the public API, and the code they show runs."""

import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import flowrl
import flowrl.data
import flowrl.data.toy
import flowrl.experiment

DOCS = Path(__file__).resolve().parent.parent / "docs"


def documented() -> set[str]:
    text = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    return set(re.findall(r"^::: ([\w.]+)", text, flags=re.M))


def test_every_public_name_has_an_api_entry():
    names = documented()
    missing = [n for n in flowrl.__all__ if n != "data" and f"flowrl.{n}" not in names]
    assert not missing, f"not in any docs page: {missing}"
    for module in (flowrl.data, flowrl.data.toy, flowrl.experiment):
        prefix = module.__name__
        missing = [n for n in module.__all__ if f"{prefix}.{n}" not in names and n != "toy"]
        assert not missing, f"not in any docs page: {missing}"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def test_index_example_runs_and_gives_partial_actions(capsys):
    (code,) = python_blocks("index.md")
    assert len(code.strip().splitlines()) <= 16
    scope: dict = {}
    exec(compile(code, "docs/index.md", "exec"), scope)
    rev, q = scope["rev"], scope["q"]
    assert q.shape == (8, 3)
    np.testing.assert_allclose(rev.t, 1.0 - scope["depth"], atol=1e-6)
    assert float(scope["loss"]) > 0 and bool(jnp.isfinite(scope["loss"]))
    assert "(8, 3)" in capsys.readouterr().out


def test_no_learner_example_is_longer_than_the_rql_one():
    examples = DOCS.parent / "examples"
    lines = {p.name: len(p.read_text().splitlines()) for p in examples.glob("*_ogbench.py")}
    assert len(lines) >= 2
    longest = max(lines, key=lines.get)
    assert lines[longest] <= lines["rql_ogbench.py"], lines
