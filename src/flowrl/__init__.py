"""flowrl: small, typed, functional JAX + Equinox components for flow-policy RL.

The public maths functions always check their inputs' shapes (once per trace) and, when
concrete, their ranges, raising a `ValueError` that names the argument. Set the environment
variable `FLOWRL_TYPECHECK=1` before the first import to also check every annotated array
shape at run time (jaxtyping + beartype); the test suite always runs that way.
"""

import importlib.metadata
import os

if os.environ.get("FLOWRL_TYPECHECK", "0") not in ("", "0"):
    from jaxtyping import install_import_hook as _install_import_hook

    _install_import_hook("flowrl", "beartype.beartype")

from . import data as data
from ._blocks import jit_block as jit_block
from ._blocks import optimizer_step as optimizer_step
from ._blocks import order_after as order_after
from ._blocks import scan_block as scan_block
from ._critics import EnsembleCritic as EnsembleCritic
from ._critics import JointCritic as JointCritic
from ._critics import StateValue as StateValue
from ._critics import ensemble_critic as ensemble_critic
from ._critics import ensemble_lcb as ensemble_lcb
from ._critics import ensemble_mean as ensemble_mean
from ._critics import ensemble_min as ensemble_min
from ._critics import joint_critic as joint_critic
from ._draws import flow_matching_draws as flow_matching_draws
from ._draws import reversal_depths as reversal_depths
from ._expanded import expanded_td_target as expanded_td_target
from ._expanded import flow_step as flow_step
from ._flows import FlowPath as FlowPath
from ._flows import Reversal as Reversal
from ._flows import euler_path as euler_path
from ._flows import euler_sample as euler_sample
from ._flows import reverse_flow as reverse_flow
from ._flows import sample as sample
from ._flows import sample_path as sample_path
from ._improvement import advantage_weights as advantage_weights
from ._improvement import bc_penalized_actor_loss as bc_penalized_actor_loss
from ._improvement import bc_penalized_value as bc_penalized_value
from ._improvement import flow_value as flow_value
from ._improvement import latent_critic_loss as latent_critic_loss
from ._improvement import latent_critic_target as latent_critic_target
from ._losses import expectile_loss as expectile_loss
from ._losses import flow_matching_loss as flow_matching_loss
from ._losses import fql_distillation_loss as fql_distillation_loss
from ._losses import fql_q_loss as fql_q_loss
from ._losses import freeze as freeze
from ._losses import interpolant as interpolant
from ._losses import one_hop_value_loss as one_hop_value_loss
from ._networks import MLP as MLP
from ._objectives import action_value_target as action_value_target
from ._objectives import ensemble_expectile_loss as ensemble_expectile_loss
from ._objectives import env_level_target as env_level_target
from ._objectives import flow_matching_batch as flow_matching_batch
from ._objectives import noise_value as noise_value
from ._objectives import one_hop_actor_loss as one_hop_actor_loss
from ._objectives import window_targets as window_targets
from ._policies import OneStepPolicy as OneStepPolicy
from ._policies import TanhGaussianPolicy as TanhGaussianPolicy
from ._policies import tanh_gaussian_log_prob as tanh_gaussian_log_prob
from ._policies import temperature_loss as temperature_loss
from ._returns import chunk_mask as chunk_mask
from ._returns import discounted_window_sum as discounted_window_sum
from ._returns import flow_lambda_returns as flow_lambda_returns
from ._returns import flow_lambda_targets as flow_lambda_targets
from ._returns import lambda_returns as lambda_returns
from ._returns import n_step_bootstrapped_returns as n_step_bootstrapped_returns
from ._returns import rql_window_target as rql_window_target
from ._returns import window_to_stream as window_to_stream
from ._returns import window_valid as window_valid
from ._reversals import AbstractReversal as AbstractReversal
from ._reversals import AuthorsReversal as AuthorsReversal
from ._reversals import BackwardReversal as BackwardReversal
from ._reversals import ExactReversal as ExactReversal
from ._selection import Selection as Selection
from ._selection import best_of_n as best_of_n
from ._selection import best_of_n_by_critic as best_of_n_by_critic
from ._selection import smoothed_action as smoothed_action
from ._targets import periodic_update as periodic_update
from ._targets import polyak_update as polyak_update
from ._targets import target_copy as target_copy
from ._targets import update_until as update_until
from ._velocity import AbstractVelocityField as AbstractVelocityField
from ._velocity import FourierTimeEmbedding as FourierTimeEmbedding
from ._velocity import VelocityField as VelocityField

try:
    __version__ = importlib.metadata.version("flowrl-eqx")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    from ._version import __version__ as __version__

__all__ = [
    "AbstractReversal",
    "AbstractVelocityField",
    "AuthorsReversal",
    "BackwardReversal",
    "EnsembleCritic",
    "ExactReversal",
    "FlowPath",
    "FourierTimeEmbedding",
    "JointCritic",
    "MLP",
    "OneStepPolicy",
    "Reversal",
    "Selection",
    "StateValue",
    "TanhGaussianPolicy",
    "VelocityField",
    "action_value_target",
    "advantage_weights",
    "bc_penalized_actor_loss",
    "bc_penalized_value",
    "best_of_n",
    "best_of_n_by_critic",
    "chunk_mask",
    "data",
    "discounted_window_sum",
    "ensemble_critic",
    "ensemble_expectile_loss",
    "ensemble_lcb",
    "ensemble_mean",
    "ensemble_min",
    "env_level_target",
    "euler_path",
    "euler_sample",
    "expanded_td_target",
    "expectile_loss",
    "flow_lambda_returns",
    "flow_lambda_targets",
    "flow_matching_batch",
    "flow_matching_draws",
    "flow_matching_loss",
    "flow_step",
    "flow_value",
    "fql_distillation_loss",
    "fql_q_loss",
    "freeze",
    "interpolant",
    "jit_block",
    "joint_critic",
    "lambda_returns",
    "latent_critic_loss",
    "latent_critic_target",
    "n_step_bootstrapped_returns",
    "noise_value",
    "one_hop_actor_loss",
    "one_hop_value_loss",
    "optimizer_step",
    "order_after",
    "periodic_update",
    "polyak_update",
    "reversal_depths",
    "reverse_flow",
    "rql_window_target",
    "sample",
    "sample_path",
    "scan_block",
    "smoothed_action",
    "tanh_gaussian_log_prob",
    "target_copy",
    "temperature_loss",
    "update_until",
    "window_targets",
    "window_to_stream",
    "window_valid",
]
