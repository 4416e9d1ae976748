"""The throughput benchmark's accounting (benchmarks/throughput.py), at the CPU size, and the
ablation variants that claim to keep the maths (benchmarks/ablate.py)."""

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from hlo_text import carried_copies

import flowrl
import flowrl.experiment as fx

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    """benchmarks/<name>.py as a module (the benchmarks are scripts, not a package), registered
    under its name: a benchmark that does `import throughput` (its own directory is on
    `sys.path` when it runs as a script) gets this one."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / f"benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture(scope="module")
def throughput():
    return _script("throughput")


@pytest.fixture(scope="module")
def ablate(throughput):
    return _script("ablate")


@pytest.fixture(scope="module")
def rql(throughput):
    return throughput.LEARNERS["rql"]


@pytest.fixture(scope="module")
def one_seed_flops(throughput, rql):
    """The matmul FLOP of one update of the CPU-sized default config."""
    cfg, ds = throughput.case_config(rql, "cpu-default", block=1)
    return throughput.cost_flops(rql, cfg, ds, throughput.init_states(rql, cfg, ds, 1))


@pytest.mark.parametrize("name", ["rql", "naive", "fql"])
def test_cases_set_the_fields_a_learners_config_has(throughput, name):
    learner = throughput.LEARNERS[name]
    fields = {f.name for f in dataclasses.fields(learner.config)}
    for case, spec in throughput.CASES.items():
        cfg, ds = throughput.case_config(learner, case, block=3)
        assert (ds.obs_dim, ds.action_dim) == (spec["obs"], spec["act"])
        assert cfg.block == cfg.steps == cfg.eval_every == 3
        for field, value in {**throughput.ENV_FIELDS, **spec["config"]}.items():
            if field in fields:
                assert getattr(cfg, field) == value, (case, field)
        for field, value in learner.defaults.items():  # the variant's own fields (naive's)
            assert getattr(cfg, field) == value
    assert "kappa" in throughput.ENV_FIELDS and ("kappa" in fields) == (name != "fql")


def test_stacked_seeds_cost_exactly_their_number_of_updates(throughput, rql, one_seed_flops):
    # vmapping the update over S seeds must add no work beyond S separate updates (and lose none).
    cfg, ds = throughput.case_config(rql, "cpu-default", block=1)
    one = one_seed_flops
    n = 2 * jax.device_count()  # split evenly over the (test session's 2 virtual) devices
    stacked = throughput.cost_flops(
        rql, cfg, ds, throughput.init_states(rql, cfg, ds, n), stacked=True
    )
    assert one > 1e8  # 2 x 256 networks, batch 256: hundreds of MFLOP per update
    assert stacked == n * one


def test_matmul_flops_count_every_iteration_of_a_loop(throughput):
    # Closed forms: a scan of 7 dependent matmuls is 7 x 2 M N K, a batched einsum counts its
    # batch axis, a cond its costlier branch. XLA's cost analysis counts the loop body once,
    # which is why the benchmark does not use it for the FLOP of an update.
    x, w = jax.numpy.ones((3, 4)), jax.numpy.ones((4, 4))
    loop = lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=7)[0]
    assert throughput.matmul_flops(loop, x, w) == 7 * 2 * 3 * 4 * 4
    xla = jax.jit(loop).lower(x, w).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    assert xla["flops"] < 2 * 2 * 3 * 4 * 4  # one iteration's, not seven
    xs, ws = jax.numpy.ones((5, 3, 4)), jax.numpy.ones((5, 4, 6))
    einsum = lambda x, w: jax.numpy.einsum("kbi,kio->kbo", x, w)
    assert throughput.matmul_flops(einsum, xs, ws) == 2 * 5 * 3 * 4 * 6
    branch = lambda p, x, w: jax.lax.cond(p, lambda: x @ w @ w, lambda: x @ w)
    assert throughput.matmul_flops(branch, True, x, w) == 2 * (2 * 3 * 4 * 4)


def test_the_update_flops_count_every_reversal_step(throughput, rql, one_seed_flops):
    # RQL's update with F flow steps reverses the batch through F actor passes (B = 256,
    # 2 x 256 MLP on obs 28 + chunk 25 + t): F = 10 costs exactly 5 such passes more than
    # F = 5, nothing else in the update depends on F.
    cfg, ds = throughput.case_config(rql, "cpu-default", block=1)
    state = throughput.init_states(rql, cfg, ds, 1)
    fewer = throughput.cost_flops(rql, dataclasses.replace(cfg, flow_steps=5), ds, state)
    actor_pass = 2 * 256 * (54 * 256 + 256 * 256 + 256 * 25)
    assert one_seed_flops - fewer == 5 * actor_pass
    assert throughput.xla_flops(rql, cfg, ds, state) < one_seed_flops - 8 * actor_pass


def _nbytes(tree) -> int:
    keys = jax.dtypes.prng_key
    return sum(
        (jax.random.key_data(x) if jax.numpy.issubdtype(x.dtype, keys) else x).nbytes
        for x in jax.tree.leaves(tree)
        if isinstance(x, jax.Array)
    )


def test_block_memory_counts_the_inputs_and_the_donated_state_once(throughput, rql):
    cfg, ds = throughput.case_config(rql, "cpu-default", block=2)
    state = throughput.init_states(rql, cfg, ds, 1)
    fn = fx.make_block(rql, cfg)  # the block throughput.py times
    mb = throughput.block_memory(fn, ds, state)
    state_mb, data_mb = _nbytes(state) / 2**20, _nbytes(ds) / 2**20
    assert mb["arguments_mb"] == pytest.approx(state_mb + data_mb, rel=1e-3)
    # The state is donated: every state buffer is reused for the new state, and only the
    # block's metrics are new outputs.
    assert mb["aliased_mb"] == pytest.approx(state_mb, rel=1e-3)
    assert 0 < mb["outputs_mb"] - mb["aliased_mb"] < 0.01
    assert mb["temporaries_mb"] > 0
    assert mb["total_mb"] == pytest.approx(
        mb["arguments_mb"] + mb["outputs_mb"] - mb["aliased_mb"] + mb["temporaries_mb"]
    )


def test_the_benchmark_runs_with_only_the_core_dependencies(one_seed_flops):
    # A GPU machine may hold JAX, Equinox, optax, diffrax and jaxtyping but not OGBench, MuJoCo,
    # tyro or beartype: the benchmark must run there from a checkout (docs/benchmarks.md).
    optional = ("ogbench", "mujoco", "gymnasium", "tyro", "beartype", "tqdm", "matplotlib")
    code = "\n".join(
        [
            "import sys",
            f"sys.modules.update(dict.fromkeys({optional!r}))  # None: importing them fails",
            "sys.path[:0] = sys.argv[1:]",
            "import throughput",
            "rql = throughput.LEARNERS['rql']",
            "cfg, ds = throughput.case_config(rql, 'cpu-default', block=1)",
            "print(throughput.cost_flops(rql, cfg, ds, throughput.init_states(rql, cfg, ds, 1)))",
        ]
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWRL_TYPECHECK", "XLA_FLAGS")}
    paths = [str(ROOT / "src"), str(ROOT / "benchmarks")]
    result = subprocess.run(
        [sys.executable, "-c", code, *paths], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) == pytest.approx(one_seed_flops, rel=0.01)


# The variants of benchmarks/ablate.py that claim to keep the maths (docs/benchmarks.md), and
# (None) ablate.py's own copy of the library critic's maths that several of them build on.
SAME_MATHS = [
    None,
    "member-major",
    "fast-variance",
    "layernorm-vjp",
    "sigmoid-gelu",
    "remat",
    "remat-activations",
]


@pytest.mark.parametrize("variant", SAME_MATHS, ids=lambda v: v or "reference")
def test_same_maths_variants_keep_the_critics_values_and_gradients(ablate, variant):
    keys = jax.random.split(jax.random.PRNGKey(3), 5)
    critic = flowrl.joint_critic(5, 3, hidden_sizes=(16, 16), num_members=4, key=keys[0])
    # Biases start at 0 and LayerNorms at (1, 0): move every array so that each one counts.
    leaves, treedef = jax.tree.flatten(critic)
    noise = jax.random.split(keys[4], len(leaves))
    leaves = [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, noise, strict=True)]
    critic = jax.tree.unflatten(treedef, leaves)
    s = jax.random.normal(keys[1], (8, 5))
    x = jax.random.normal(keys[2], (8, 3))
    t = jax.random.uniform(keys[3], (8,))
    weights = jax.random.normal(keys[0], (8, 4))

    def loss(c):
        return jax.numpy.sum(weights * jax.vmap(c)(s, x, t) ** 2)

    value, grads = jax.value_and_grad(loss)(critic)
    spec = (
        ablate.CRITIC_VARIANTS[variant] if variant else ablate.CriticVariant(ablate.members_apply)
    )
    variant_critic = ablate.variant_critic(critic, spec)
    assert isinstance(variant_critic, ablate.VariantCritic)  # not the library's class
    value_b, grads_b = jax.value_and_grad(loss)(variant_critic)
    assert float(value_b) == pytest.approx(float(value), rel=1e-5)
    leaves, leaves_b = jax.tree.leaves(grads), jax.tree.leaves(grads_b)
    assert len(leaves) == len(leaves_b) == 10  # 3 linear layers and 2 LayerNorms, 2 arrays each
    for g, g_b in zip(leaves, leaves_b, strict=True):  # equal up to float32 rounding
        scale = float(jax.numpy.max(jax.numpy.abs(g)))
        assert scale > 1.0
        assert float(jax.numpy.max(jax.numpy.abs(g_b - g))) <= 1e-5 * scale


@pytest.fixture(scope="module")
def tiny(ablate, throughput):
    """A test-size RQL config (blocks of 2 updates: XLA unrolls a loop of 1) and synthetic data."""
    rql = ablate.rql
    cfg = rql.Config(hidden=(16, 16), num_critics=2, batch_size=8, horizon=2, block=2)
    cfg = rql.resolve(dataclasses.replace(cfg, steps=2, eval_every=2))
    return cfg, throughput.synthetic_dataset(5, 2, n=2000)


def test_the_ablation_update_with_every_part_kept_is_the_examples_step(ablate, tiny):
    # The removal variants change ablate.py's copy of the loss and the update; with nothing
    # removed the copy must be the example's step (so B differs from A only in what it removes).
    cfg, ds = tiny
    state = ablate.RQL.init(cfg, ds.obs_dim, cfg.horizon * ds.action_dim, jax.random.key(1))
    # The targets start as copies of the online networks; move them so their updates count.
    nudge = lambda tree: jax.tree.map(lambda x: x + 0.01 * jax.numpy.cos(x), tree)  # noqa: E731
    state = dataclasses.replace(
        state, actor_ema=nudge(state.actor_ema), critic_target=nudge(state.critic_target)
    )
    ours = ablate.step_with(ablate.update_with(ablate._loss_without()))
    step = jax.jit(lambda st, f: f(cfg, st, ds), static_argnums=1)
    new, metrics = step(state, ablate.RQL.step)
    new_b, metrics_b = step(state, ours)
    assert metrics.keys() == metrics_b.keys()
    leaves, leaves_b = jax.tree.leaves((new, metrics)), jax.tree.leaves((new_b, metrics_b))
    assert len(leaves) == len(leaves_b)
    keys = jax.dtypes.prng_key
    for x, y in zip(leaves, leaves_b, strict=True):
        if jax.numpy.issubdtype(x.dtype, keys):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert jax.numpy.allclose(x, y, rtol=1e-6, atol=1e-7)


def test_every_ablation_variant_traces_to_the_examples_state(ablate, tiny):
    # Each variant's step, traced (not compiled), keeps the state's shapes and the metrics.
    cfg, ds = tiny
    dims = (ds.obs_dim, cfg.horizon * ds.action_dim)
    a_state = ablate.RQL.init(cfg, *dims, jax.random.key(0))
    _, a_metrics = jax.eval_shape(lambda st: ablate.RQL.step(cfg, st, ds), a_state)
    shapes = lambda tree: [x.shape for x in jax.tree.leaves(tree)]  # noqa: E731
    for name, make in ablate.VARIANTS.items():
        learner = make()
        state = learner.init(cfg, *dims, jax.random.key(0))
        new, metrics = jax.eval_shape(lambda st, f=learner.step: f(cfg, st, ds), state)
        assert shapes(new) == shapes(state), name
        assert metrics.keys() == a_metrics.keys(), name
        if name in ablate.CRITIC_VARIANTS:
            assert isinstance(new.critic, ablate.VariantCritic), name
            assert isinstance(new.critic_target, ablate.VariantCritic), name


def test_the_unordered_variant_copies_the_carried_weights_and_the_example_does_not(ablate, tiny):
    # `unordered` undoes flowrl.order_after: XLA then copies the hidden weight matrices out of
    # the block's carried state on every step (the effect ablate.py measures).
    cfg, ds = tiny
    hidden = {(16, 16), (2, 16, 16)}  # the actor's and the critic ensemble's hidden weights
    copied = {}
    for name in ("none", "unordered"):
        learner = ablate.VARIANTS[name]()
        state = learner.init(cfg, ds.obs_dim, cfg.horizon * ds.action_dim, jax.random.key(0))
        block = fx.make_block(learner, cfg).lower(ds, state).compile()
        copied[name] = set(carried_copies(block.compiled.as_text()))
    assert not hidden & copied["none"], copied["none"]
    assert hidden <= copied["unordered"], copied["unordered"]
