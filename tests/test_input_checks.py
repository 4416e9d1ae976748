"""The always-on input checks of the public maths functions (`flowrl._checks`).

A wrong shape or an out-of-range value raises `InputError` (a `ValueError`) naming the function,
the argument and what it expects, with or without the type-check hook; numpy float64 inputs
are accepted and give the float32 result; the checks put nothing in the traced program.
"""

import os
import subprocess
import sys
import timeit
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from program_checks import (
    assert_checks_leave_the_program_unchanged,
    assert_float64_inputs_give_the_float32_result,
)

import flowrl
from flowrl import _checks
from flowrl._checks import InputError

SRC = Path(__file__).resolve().parent.parent / "src"

V = flowrl.VelocityField(3, 2, (8,), key=jax.random.key(0))
C = flowrl.joint_critic(3, 2, hidden_sizes=(8,), num_members=2, key=jax.random.key(1))
S, A = jnp.ones(3), jnp.full(2, 0.5)
H1, H0 = jnp.ones(4), jnp.zeros(4)
PATH = flowrl.reverse_flow(V, S, A, 0.5, steps=4, return_path=True).path


# (function named in the message, the bad call, the argument, what the message expects)
BAD = {
    # The new user's cases.
    "v_bootstrap (3,)": (
        "rql_window_target",
        lambda: flowrl.rql_window_target(H1, H0, H1, jnp.ones(3), 0.9),
        "v_bootstrap",
        "have shape () (a scalar)",
    ),
    "mask_t wrong length": (
        "rql_window_target",
        lambda: flowrl.rql_window_target(H1, H0, jnp.ones(3), 1.0, 0.9),
        "mask_t",
        "have shape (h,) with h = 4 from r_t",
    ),
    "s too long, x too short": (
        "JointCritic",
        lambda: C(jnp.ones(4), jnp.ones(1), 0.5),
        "s",
        "have shape (O,) with O = 3 from obs_dim",
    ),
    "x too short": (
        "JointCritic",
        lambda: C(S, jnp.ones(1), 0.5),
        "x",
        "have shape (A,) with A = 2 from action_dim",
    ),
    "depth 1.5": ("reverse_flow", lambda: flowrl.reverse_flow(V, S, A, 1.5), "depth", "[0, 1]"),
    "t -0.1": ("JointCritic", lambda: C(S, A, -0.1), "t", "[0, 1]"),
    "discount 1.2": (
        "rql_window_target",
        lambda: flowrl.rql_window_target(H1, H0, H1, 1.0, 1.2),
        "discount",
        "[0, 1]",
    ),
    # Flows.
    "sample batch s": (
        "sample",
        lambda: flowrl.sample(V, jnp.ones((4, 3)), A),
        "s",
        "have shape (O,)",
    ),
    "sample t1": ("sample", lambda: flowrl.sample(V, S, A, t1=1.5), "t1", "[0, 1]"),
    "sample clip": ("sample", lambda: flowrl.sample(V, S, A, clip=0.0), "clip", "> 0"),
    "euler_sample steps": (
        "euler_sample",
        lambda: flowrl.euler_sample(V, S, A, steps=0),
        "steps",
        "int >= 1",
    ),
    "sample_path t0": ("sample_path", lambda: flowrl.sample_path(V, S, A, t0=-0.5), "t0", "[0, 1]"),
    "euler_path x0": (
        "euler_path",
        lambda: flowrl.euler_path(V, S, jnp.ones((2, 2))),
        "x0",
        "have shape (A,)",
    ),
    "reverse_flow depth (2,)": (
        "reverse_flow",
        lambda: flowrl.reverse_flow(V, S, A, jnp.ones(2)),
        "depth",
        "have shape () (a scalar)",
    ),
    "velocity x": ("VelocityField", lambda: V(S, jnp.ones(3), 0.5), "x", "A = 2 from action_dim"),
    # Returns.
    "chunk_mask terminal": (
        "chunk_mask",
        lambda: flowrl.chunk_mask(jnp.array([0.0, 2.0])),
        "terminal_t",
        "[0, 1]",
    ),
    "window_valid 2-D": (
        "window_valid",
        lambda: flowrl.window_valid(jnp.zeros((4, 1))),
        "terminal_t",
        "have shape (h,)",
    ),
    "window_to_stream mask": (
        "window_to_stream",
        lambda: flowrl.window_to_stream(H1, H0, jnp.ones(5), 0.9),
        "mask_t",
        "h = 4 from r_t",
    ),
    "n_step n": (
        "n_step_bootstrapped_returns",
        lambda: flowrl.n_step_bootstrapped_returns(H1, H1, H1, 0),
        "n",
        "int >= 1",
    ),
    "n_step discount_t": (
        "n_step_bootstrapped_returns",
        lambda: flowrl.n_step_bootstrapped_returns(H1, 1.5 * H1, H1, 2),
        "discount_t",
        "[0, 1]",
    ),
    "lambda_returns v_t": (
        "lambda_returns",
        lambda: flowrl.lambda_returns(H1, H1, jnp.ones(3)),
        "v_t",
        "T = 4 from r_t",
    ),
    "lambda_returns lambda_ shape": (
        "lambda_returns",
        lambda: flowrl.lambda_returns(H1, H1, H1, jnp.ones(3)),
        "lambda_",
        "have shape () (a scalar) or (T,)",
    ),
    "lambda_returns lambda_ 1.5": (
        "lambda_returns",
        lambda: flowrl.lambda_returns(H1, H1, H1, 1.5),
        "lambda_",
        "[0, 1]",
    ),
    "flow_lambda_targets lambda_": (
        "flow_lambda_targets",
        lambda: flowrl.flow_lambda_targets(C, S, PATH, 1.0, lambda_=jnp.ones(5)),
        "lambda_",
        "F = 4 from path",
    ),
    "flow_lambda_targets env_target": (
        "flow_lambda_targets",
        lambda: flowrl.flow_lambda_targets(C, S, PATH, jnp.ones(2)),
        "env_target",
        "have shape () (a scalar)",
    ),
    # Expanded MDP and losses.
    "expanded_td_target t": (
        "expanded_td_target",
        lambda: flowrl.expanded_td_target(C, S, A, 1.5, A, 1.0),
        "t",
        "[0, 1]",
    ),
    "flow_step u": ("flow_step", lambda: flowrl.flow_step(A, 0.5, jnp.ones(3)), "u", "A = 2"),
    "flow_matching_loss mask": (
        "flow_matching_loss",
        lambda: flowrl.flow_matching_loss(A, A, A, jnp.ones(3)),
        "mask",
        "A = 2 from u",
    ),
    "expectile_loss prediction": (
        "expectile_loss",
        lambda: flowrl.expectile_loss(jnp.ones((2, 3)), jnp.ones((2, 4)), 0.5),
        "prediction",
        "shape = (2, 3) from target",
    ),
    "expectile_loss kappa": (
        "expectile_loss",
        lambda: flowrl.expectile_loss(H1, H1, 1.5),
        "kappa",
        "[0, 1]",
    ),
    "one_hop_value_loss t": (
        "one_hop_value_loss",
        lambda: flowrl.one_hop_value_loss(C, S, A, -0.5, A),
        "t",
        "[0, 1]",
    ),
    "interpolant a": (
        "interpolant",
        lambda: flowrl.interpolant(A, jnp.ones(3), 0.5),
        "a",
        "A = 2 from x0",
    ),
    "fql_q_loss q": ("fql_q_loss", lambda: flowrl.fql_q_loss(jnp.ones((2, 2))), "q", "(B,)"),
    "ensemble_lcb q": (
        "ensemble_lcb",
        lambda: flowrl.ensemble_lcb(jnp.ones(()), 0.5),
        "q",
        "have shape (*batch, K)",
    ),
    # Batch objectives.
    "window_targets v_bootstrap": (
        "window_targets",
        lambda: flowrl.window_targets(
            jnp.ones((2, 4)), jnp.zeros((2, 4)), jnp.ones((2, 4)), H1, 0.9
        ),
        "v_bootstrap",
        "B = 2 from rewards",
    ),
    "ensemble_expectile_loss target": (
        "ensemble_expectile_loss",
        lambda: flowrl.ensemble_expectile_loss(jnp.ones((2, 3)), H1, jnp.ones(2), 0.9),
        "target",
        "B = 2 from q",
    ),
    "flow_matching_batch t": (
        "flow_matching_batch",
        lambda: flowrl.flow_matching_batch(
            V, jnp.ones((2, 3)), jnp.ones((2, 2)), jnp.ones((2, 2)), jnp.array([0.5, 2.0])
        ),
        "t",
        "[0, 1]",
    ),
    "joint_critic num_members": (
        "joint_critic",
        lambda: flowrl.joint_critic(3, 2, num_members=0, key=jax.random.key(0)),
        "num_members",
        "int >= 1",
    ),
    "reversal_depths steps": (
        "reversal_depths",
        lambda: flowrl.reversal_depths(jax.random.key(0), 4, 0),
        "steps",
        "int >= 1",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_names_the_argument(case, no_type_check_hook):
    where, call, argument, expected = BAD[case]
    with pytest.raises(InputError) as info:
        call()
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith(f"{where}: {argument} must "), message
    assert expected in message, message


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_with_the_type_check_hook(case):
    # The hook's shape check may come first: either way the error names the argument.
    _, call, argument, _ = BAD[case]
    with pytest.raises((InputError, jaxtyping.TypeCheckError)) as info:
        call()
    message = str(info.value)
    assert f" {argument} must " in message or f"parameter '{argument}'" in message, message


def _numpy_cases():
    """(name, function, float32 jax arguments): each is also called with float64 numpy."""
    r = jnp.array([1.0, 0.5, 0.25, 2.0])
    term = jnp.array([0.0, 0.0, 1.0, 0.0])
    return [
        ("reverse_flow", lambda s, a, d: flowrl.reverse_flow(V, s, a, d).x, (S, A, 0.7)),
        ("sample", lambda s, x: flowrl.sample(V, s, x, t0=0.2), (S, A)),
        ("JointCritic", C, (S, A, 0.3)),
        ("rql_window_target", flowrl.rql_window_target, (r, term, H1, 2.0, 0.9)),
        ("lambda_returns", flowrl.lambda_returns, (r, 0.9 * H1, r, 0.5)),
        ("n_step", flowrl.n_step_bootstrapped_returns, (r, 0.9 * H1, r, 2)),
        ("expectile_loss", flowrl.expectile_loss, (r, H0, 0.7)),
        ("flow_matching_loss", flowrl.flow_matching_loss, (A, A + 1.0, A, A)),
        ("interpolant", flowrl.interpolant, (A, A + 1.0, 0.25)),
        ("ensemble_lcb", flowrl.ensemble_lcb, (jnp.ones((2, 3)), 0.5)),
        ("flow_step", flowrl.flow_step, (A, 0.5, A)),
        (
            "ensemble_expectile_loss",
            flowrl.ensemble_expectile_loss,
            (jnp.ones((2, 3)), jnp.zeros(2), jnp.ones(2), 0.9),
        ),
    ]


def _float64(x):
    return np.asarray(x, np.float64) if isinstance(x, jax.Array) else np.float64(x)


@pytest.mark.parametrize("name", [c[0] for c in _numpy_cases()])
def test_numpy_float64_inputs_give_the_float32_result(name):
    (fn, args) = next((f, a) for n, f, a in _numpy_cases() if n == name)
    assert_float64_inputs_give_the_float32_result(fn, args, _float64)


SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
import flowrl
from flowrl._checks import InputError

v = flowrl.VelocityField(3, 2, (8,), key=jax.random.key(0))
c = flowrl.joint_critic(3, 2, hidden_sizes=(8,), num_members=2, key=jax.random.key(1))
s, a = np.ones(3), np.full(2, 0.5)
with jax.numpy_dtype_promotion("strict"):
    same = [
        np.array_equal(flowrl.reverse_flow(v, s, a, np.float64(0.7)).x,
                       flowrl.reverse_flow(v, jnp.asarray(s, jnp.float32),
                                           jnp.asarray(a, jnp.float32), 0.7).x),
        np.array_equal(c(s, a, np.float64(0.3)), c(jnp.ones(3), jnp.full(2, 0.5), 0.3)),
        np.array_equal(flowrl.rql_window_target(np.ones(4), np.zeros(4), np.ones(4), 2.0, 0.9),
                       flowrl.rql_window_target(jnp.ones(4), jnp.zeros(4), jnp.ones(4), 2.0, 0.9)),
    ]
print("RESULT same", all(same))
for bad in (
    lambda: flowrl.rql_window_target(np.ones(4), np.zeros(4), np.ones(4), np.ones(3), 0.9),
    lambda: c(np.ones(4), np.ones(1), 0.5),
    lambda: flowrl.reverse_flow(v, s, a, 1.5),
):
    try:
        bad()
    except InputError as e:
        print("RESULT InputError", str(e).split(":")[0])
    except Exception as e:
        print("RESULT", type(e).__name__)
    else:
        print("RESULT no error")
"""


@pytest.mark.slow
def test_without_the_hook_in_a_fresh_interpreter():
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTEST") and k != "FLOWRL_TYPECHECK"
    }
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    results = [
        line.removeprefix("RESULT ") for line in proc.stdout.splitlines() if "RESULT" in line
    ]
    assert results == [
        "same True",
        "InputError rql_window_target",
        "InputError JointCritic",
        "InputError reverse_flow",
    ], proc.stdout + proc.stderr


def test_valid_inputs_under_jit_and_vmap_with_mixed_depths():
    depths = jnp.array([0.0, 0.3, 1.0, 0.6])
    s, a = jnp.ones((4, 3)), jnp.tile(A, (4, 1))

    @jax.jit
    def reversed_values(s, a, d):
        rev = jax.vmap(lambda s_, a_, d_: flowrl.reverse_flow(V, s_, a_, d_))(s, a, d)
        return rev, jax.vmap(C)(s, rev.x, rev.t)

    rev, q = reversed_values(s, a, depths)
    np.testing.assert_array_equal(rev.x[0], A)  # depth 0 returns `a` exactly
    np.testing.assert_allclose(rev.t, 1.0 - depths, atol=1e-6)
    assert q.shape == (4, 2) and bool(jnp.all(jnp.isfinite(q)))
    # Values are checked only when concrete: a traced depth of 1.5 is not an error under jit.
    jax.jit(lambda d: flowrl.reverse_flow(V, S, A, d).x)(1.5)


def _programs():
    """Public functions on valid inputs, as closures of their array arguments."""
    r = jnp.array([1.0, 0.5, 0.25, 2.0])
    return {
        "reverse_flow": (lambda s, a, d: flowrl.reverse_flow(V, s, a, d), (S, A, 0.5)),
        "sample": (lambda s, x: flowrl.sample(V, s, x), (S, A)),
        "JointCritic": (lambda s, x, t: C(s, x, t), (S, A, 0.5)),
        "rql_window_target": (
            lambda r, m, v: flowrl.rql_window_target(r, H0, m, v, 0.9),
            (r, H1, 2.0),
        ),
        "lambda_returns": (lambda r, v: flowrl.lambda_returns(r, 0.9 * H1, v, 0.5), (r, r)),
        "flow_lambda_targets": (
            lambda s, y: flowrl.flow_lambda_targets(C, s, PATH, y, lambda_=0.5),
            (S, 1.0),
        ),
        "one_hop_value_loss": (
            lambda s, x, t: flowrl.one_hop_value_loss(C, s, x, t, x),
            (S, A, 0.5),
        ),
        "window_targets": (
            lambda r, v: flowrl.window_targets(r, 0 * r, 1 + 0 * r, v, 0.9),
            (jnp.ones((2, 4)), jnp.ones(2)),
        ),
    }


@pytest.mark.parametrize("name", list(_programs()))
def test_checks_leave_the_traced_program_unchanged(name, monkeypatch):
    assert_checks_leave_the_program_unchanged(*_programs()[name], monkeypatch)


def test_critic_sizes_are_static_and_serialisation_unchanged(tmp_path):
    # obs_dim and action_dim are static fields: the leaves (what a checkpoint holds) are the
    # members' arrays alone, as before, and a saved critic loads into a freshly built one.
    assert (C.obs_dim, C.action_dim) == (3, 2)
    assert len(jax.tree.leaves(C)) == len(jax.tree.leaves(C.members))
    eqx.tree_serialise_leaves(tmp_path / "critic.eqx", C)
    like = flowrl.joint_critic(3, 2, hidden_sizes=(8,), num_members=2, key=jax.random.key(9))
    loaded = eqx.tree_deserialise_leaves(tmp_path / "critic.eqx", like)
    np.testing.assert_array_equal(loaded(S, A, 0.5), C(S, A, 0.5))


def test_trace_time_cost_of_the_checks_is_microseconds():
    # The checks of `rql_window_target` alone, on traced-like (jax) arguments: a few microseconds
    # per trace (the report quotes the measured figure), nothing per step.
    def checks():
        _checks.check_shapes(
            "f", ("r_t", H1, "h"), ("terminal_t", H0, "h"), ("mask_t", H1, "h"), ("v", 1.0, "")
        )
        _checks.check_range("f", "discount", 0.9)

    per_call = min(timeit.repeat(checks, number=200, repeat=5)) / 200
    assert per_call < 1e-3, per_call
