"""`FLOWRL_TYPECHECK=1` switches the runtime shape checks on outside pytest, and only then.

The suite itself runs with jaxtyping's pytest plugin (`--jaxtyping-packages` in pyproject.toml),
so these checks run `import flowrl` in a fresh interpreter, where that plugin is absent and
only the environment variable decides.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# A wrong-shape call to a public function: `x0` binds A = 2, then `a` has A = 3.
SCRIPT = """
import jax.numpy as jnp
import jaxtyping

import flowrl

assert flowrl.interpolant(jnp.zeros(2), jnp.ones(2), 0.5).shape == (2,)  # a good call
try:
    flowrl.interpolant(jnp.zeros(2), jnp.zeros(3), 0.5)
except jaxtyping.TypeCheckError as e:
    print("RESULT TypeCheckError", "parameter 'a'" in str(e))
except Exception as e:
    print("RESULT", type(e).__name__)
else:
    print("RESULT no error")
"""


def _run(typecheck: str | None) -> str:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTEST") and k != "FLOWRL_TYPECHECK"
    }
    if typecheck is not None:
        env["FLOWRL_TYPECHECK"] = typecheck
    # This tree's sources, whatever copy of flowrl is installed.
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"the subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, f"unexpected output:\n{proc.stdout}\n{proc.stderr}"
    return lines[0].removeprefix("RESULT ")


@pytest.mark.slow
def test_flowrl_typecheck_1_installs_the_hook():
    assert _run("1") == "TypeCheckError True"  # raised, and it names the parameter `a`


@pytest.mark.slow
@pytest.mark.parametrize("typecheck", ["0", "", None], ids=["0", "empty", "unset"])
def test_without_flowrl_typecheck_there_is_no_type_check(typecheck):
    result = _run(typecheck)
    # The library's own always-on check instead (flowrl._checks.InputError, a ValueError),
    # not jaxtyping's error.
    assert result != "TypeCheckError True" and not result.startswith("TypeCheckError")
    assert result == "InputError", result
