r"""Policies that map noise to an action in one network evaluation: FQL's one-step policy
`mu(s, z)`, and SAC's tanh-Gaussian policy with its log-density and temperature loss.

The noise is an argument, as everywhere: draw it with `jax.random.normal`."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Scalar, ScalarLike

from ._checks import as_float, check_shapes
from ._networks import MLP, _glorot_linear


class OneStepPolicy(eqx.Module):
    r"""A one-step policy $\mu(s, z)$: an [`flowrl.MLP`][] on `concat(s, z)` with `z` noise
    shaped like the action.

    Flow Q-Learning distils a multi-step BC flow into it ([`flowrl.fql_distillation_loss`][]:
    the same `z` goes into both) while maximising Q. The output is NOT squashed (no tanh):
    clip it to `[-1, 1]` before the critic and when acting, as FQL does.
    """

    net: MLP
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...] | list[int] = (512, 512, 512, 512),
        *,
        layer_norm: bool = False,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `obs_dim`: size of the observation `s`.
        - `action_dim`: size of the (flattened, chunked) action, and of the noise `z`.
        - `hidden_sizes`: hidden widths of the MLP (FQL: four layers of 512).
        - `layer_norm`: LayerNorm after each hidden activation (off in FQL's actors).
        - `key`: initialisation key.
        """
        self.net = MLP(
            obs_dim + action_dim, action_dim, hidden_sizes, layer_norm=layer_norm, key=key
        )
        self.obs_dim = obs_dim
        self.action_dim = action_dim

    def __call__(self, s: Float[ArrayLike, " O"], z: Float[ArrayLike, " A"]) -> Float[Array, " A"]:
        """**Arguments:** `s` `(obs_dim,)`, noise `z` `(action_dim,)`.

        **Returns:** the unclipped action `(action_dim,)`.
        """
        check_shapes(
            "OneStepPolicy",
            ("s", s, "O"),
            ("z", z, "A"),
            dims={"O": (self.obs_dim, "obs_dim"), "A": (self.action_dim, "action_dim")},
        )
        return self.net(jnp.concatenate([as_float(s), as_float(z)]))


def tanh_gaussian_log_prob(
    y: Float[ArrayLike, " A"], mean: Float[ArrayLike, " A"], log_std: Float[ArrayLike, " A"]
) -> Scalar:
    r"""The log-density of $u = \tanh(y)$, $y \sim \mathcal N(\mu, \operatorname{diag}\sigma^2)$,
    evaluated from the PRE-tanh sample $y$:

    $$\log \pi(u) = \sum_j \Big[\log \mathcal N(y_j; \mu_j, \sigma_j)
      - \log\big(1 - \tanh^2 y_j\big)\Big],$$

    the change of variables of the elementwise $\tanh$. The Jacobian term is computed as
    $\log(1 - \tanh^2 y) = 2\,(\log 2 - y - \operatorname{softplus}(-2y))$, which stays finite
    where $\tanh y$ rounds to $\pm 1$ (from $|y| \approx 9$ in float32), unlike
    $\log(1 - u^2)$ or anything computed from $\operatorname{atanh}(u)$.

    **Arguments:**

    - `y`: the pre-tanh sample $y$ `(A,)`.
    - `mean`: $\mu$ `(A,)`.
    - `log_std`: $\log \sigma$ `(A,)` (used as given; [`flowrl.TanhGaussianPolicy`][] clips
      it).

    **Returns:** the scalar log-density of $\tanh(y)$.
    """
    check_shapes(
        "tanh_gaussian_log_prob", ("y", y, "A"), ("mean", mean, "A"), ("log_std", log_std, "A")
    )
    y = as_float(y)
    mean, log_std = as_float(mean, y.dtype), as_float(log_std, y.dtype)
    normal = -0.5 * ((y - mean) / jnp.exp(log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (math.log(2.0) - y - jax.nn.softplus(-2.0 * y))
    return jnp.sum(normal - log_det)


class TanhGaussianPolicy(eqx.Module):
    r"""A squashed Gaussian policy $\pi(u \mid s)$ (SAC's): $u = \tanh(\mu(s) + \sigma(s)\,
    \epsilon)$ with $\epsilon \sim \mathcal N(0, I)$, so $u \in (-1, 1)^A$.

    A trunk of `Linear -> GELU` layers, one per hidden width (the last hidden layer is
    activated too; no LayerNorm), then two separate Glorot-uniform `Linear` heads for the mean
    $\mu$ and for $\log\sigma$, the latter clipped to `[log_std_min, log_std_max]`
    (`[-20, 2]`). The sample is reparameterised: gradients reach the parameters through
    $\mu$ and $\sigma$, the noise $\epsilon$ is an argument. Its log-density is
    [`flowrl.tanh_gaussian_log_prob`][].

    DSRL's noise policy (in the noise space of a BC flow) and the edit policies of FEdit and
    QAM-E are of this kind; [`flowrl.temperature_loss`][] tunes the weight of their entropy.
    """

    trunk: MLP
    mean_head: eqx.nn.Linear
    log_std_head: eqx.nn.Linear
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)
    log_std_min: float = eqx.field(static=True)
    log_std_max: float = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...] | list[int] = (512, 512, 512, 512),
        *,
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
        key: PRNGKeyArray,
    ):
        r"""**Arguments:**

        - `obs_dim`: size of the observation `s`.
        - `action_dim`: size of the output `u` (and of the noise `eps`).
        - `hidden_sizes`: widths of the trunk's layers, at least one (QAM's: four of 512).
        - `log_std_min`, `log_std_max`: the clipping range of $\log\sigma$.
        - `key`: initialisation key.
        """
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        if not hidden_sizes:
            raise ValueError("TanhGaussianPolicy: hidden_sizes must name at least one layer")
        if not log_std_min < log_std_max:
            raise ValueError(
                "TanhGaussianPolicy: log_std_min must be < log_std_max, got "
                f"{log_std_min} and {log_std_max}"
            )
        k_trunk, k_mean, k_std = jax.random.split(key, 3)
        # An MLP ends with a Linear layer: the trunk's last hidden layer is that layer, and
        # __call__ applies its GELU.
        self.trunk = MLP(obs_dim, hidden_sizes[-1], hidden_sizes[:-1], key=k_trunk)
        self.mean_head = _glorot_linear(hidden_sizes[-1], action_dim, 1.0, key=k_mean)
        self.log_std_head = _glorot_linear(hidden_sizes[-1], action_dim, 1.0, key=k_std)
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.log_std_min = float(log_std_min)
        self.log_std_max = float(log_std_max)

    def distribution(
        self, s: Float[ArrayLike, " O"]
    ) -> tuple[Float[Array, " A"], Float[Array, " A"]]:
        r"""**Arguments:** `s` `(obs_dim,)`.

        **Returns:** `(mean, log_std)` of the pre-tanh Gaussian, each `(action_dim,)`, with
        `log_std` clipped.
        """
        check_shapes("TanhGaussianPolicy", ("s", s, "O"), dims={"O": (self.obs_dim, "obs_dim")})
        h = jax.nn.gelu(self.trunk(as_float(s)))
        log_std = jnp.clip(self.log_std_head(h), self.log_std_min, self.log_std_max)
        return self.mean_head(h), log_std

    def __call__(
        self, s: Float[ArrayLike, " O"], eps: Float[ArrayLike, " A"]
    ) -> tuple[Float[Array, " A"], Scalar]:
        r"""A reparameterised sample and its log-density.

        **Arguments:** `s` `(obs_dim,)`, standard normal noise `eps` `(action_dim,)`.

        **Returns:** `(u, log_prob)`: $u = \tanh(\mu + \sigma\,\epsilon)$ `(action_dim,)` and
        $\log \pi(u \mid s)$, a scalar.
        """
        check_shapes(
            "TanhGaussianPolicy",
            ("s", s, "O"),
            ("eps", eps, "A"),
            dims={"O": (self.obs_dim, "obs_dim"), "A": (self.action_dim, "action_dim")},
        )
        mean, log_std = self.distribution(s)
        y = mean + jnp.exp(log_std) * as_float(eps, mean.dtype)
        return jnp.tanh(y), tanh_gaussian_log_prob(y, mean, log_std)


def temperature_loss(
    log_alpha: ScalarLike, entropy: ScalarLike, target_entropy: ScalarLike
) -> Scalar:
    r"""SAC's loss for an entropy temperature $\alpha = \exp(\log\alpha)$:

    $$\mathcal L_\alpha = \alpha\, \big(\mathrm{sg}(\bar H) - H^\star\big),$$

    with $\bar H$ the policy's entropy estimate (e.g. $-\frac1B\sum_b \log\pi(u_b \mid s_b)$,
    constant here) and $H^\star$ the target entropy. Its gradient
    $\partial\mathcal L_\alpha / \partial\log\alpha = \alpha\,(\bar H - H^\star)$ LOWERS
    $\alpha$ while the entropy is above the target and RAISES it while it is below: the
    policy's loss $\mathrm{sg}(\alpha)\log\pi - Q$ then weighs entropy until $\bar H \approx
    H^\star$. DSRL, FEdit and QAM-E use $H^\star = -\frac12 d$ ($d$ the chunk size) and start
    from $\alpha = 1$.

    **Arguments:**

    - `log_alpha`: the trained scalar $\log\alpha$.
    - `entropy`: the entropy estimate $\bar H$, a scalar (its gradient is stopped).
    - `target_entropy`: $H^\star$, a scalar.

    **Returns:** the scalar loss.
    """
    check_shapes(
        "temperature_loss",
        ("log_alpha", log_alpha, ""),
        ("entropy", entropy, ""),
        ("target_entropy", target_entropy, ""),
    )
    log_alpha = as_float(log_alpha)
    gap = jax.lax.stop_gradient(as_float(entropy, log_alpha.dtype)) - as_float(
        target_entropy, log_alpha.dtype
    )
    return jnp.exp(log_alpha) * gap
