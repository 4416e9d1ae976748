"""flowrl: small, typed, functional JAX + Equinox components for flow-policy RL.

Set the environment variable `FLOWRL_TYPECHECK=1` before the first import to check every
array shape at run time (jaxtyping + beartype); the test suite always runs that way.
"""

import importlib.metadata
import os

if os.environ.get("FLOWRL_TYPECHECK", "0") not in ("", "0"):
    from jaxtyping import install_import_hook as _install_import_hook

    _install_import_hook("flowrl", "beartype.beartype")

from . import data as data
from ._critics import EnsembleCritic as EnsembleCritic
from ._critics import JointCritic as JointCritic
from ._critics import ensemble_critic as ensemble_critic
from ._critics import ensemble_lcb as ensemble_lcb
from ._critics import ensemble_mean as ensemble_mean
from ._critics import ensemble_min as ensemble_min
from ._critics import joint_critic as joint_critic
from ._distributed import fetch_to_host as fetch_to_host
from ._distributed import init_distributed as init_distributed
from ._distributed import init_seeds as init_seeds
from ._distributed import replicate as replicate
from ._distributed import same_placement as same_placement
from ._distributed import seed_mesh as seed_mesh
from ._distributed import shard_seeds as shard_seeds
from ._draws import flow_matching_draws as flow_matching_draws
from ._draws import reversal_depths as reversal_depths
from ._evaluation import EvalResult as EvalResult
from ._evaluation import evaluate as evaluate
from ._expanded import expanded_td_target as expanded_td_target
from ._expanded import flow_step as flow_step
from ._experiment import CheckpointError as CheckpointError
from ._experiment import CSVLogger as CSVLogger
from ._experiment import ExtraWriters as ExtraWriters
from ._experiment import NonFiniteLossError as NonFiniteLossError
from ._experiment import check_finite as check_finite
from ._experiment import jit_block as jit_block
from ._experiment import load_checkpoint as load_checkpoint
from ._experiment import optimizer_step as optimizer_step
from ._experiment import order_after as order_after
from ._experiment import plot_learning_curve as plot_learning_curve
from ._experiment import progress as progress
from ._experiment import restore_config as restore_config
from ._experiment import save_checkpoint as save_checkpoint
from ._experiment import save_video as save_video
from ._experiment import scan_block as scan_block
from ._experiment import train_loop as train_loop
from ._flows import FlowPath as FlowPath
from ._flows import Reversal as Reversal
from ._flows import euler_path as euler_path
from ._flows import euler_sample as euler_sample
from ._flows import reverse_flow as reverse_flow
from ._losses import expectile_loss as expectile_loss
from ._losses import flow_matching_loss as flow_matching_loss
from ._losses import fql_distillation_loss as fql_distillation_loss
from ._losses import fql_q_loss as fql_q_loss
from ._losses import freeze as freeze
from ._losses import interpolant as interpolant
from ._losses import one_hop_value_loss as one_hop_value_loss
from ._networks import MLP as MLP
from ._policies import OneStepPolicy as OneStepPolicy
from ._returns import chunk_mask as chunk_mask
from ._returns import discounted_window_sum as discounted_window_sum
from ._returns import lambda_returns as lambda_returns
from ._returns import n_step_bootstrapped_returns as n_step_bootstrapped_returns
from ._returns import rql_window_target as rql_window_target
from ._returns import window_valid as window_valid
from ._run import RUN_CONTROL as RUN_CONTROL
from ._run import Learner as Learner
from ._run import RunConfig as RunConfig
from ._run import check_config as check_config
from ._run import run as run
from ._stats import Interval as Interval
from ._stats import confidence_interval as confidence_interval
from ._targets import periodic_update as periodic_update
from ._targets import polyak_update as polyak_update
from ._velocity import AbstractVelocityField as AbstractVelocityField
from ._velocity import FourierTimeEmbedding as FourierTimeEmbedding
from ._velocity import VelocityField as VelocityField

try:
    __version__ = importlib.metadata.version("flowrl-eqx")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    from ._version import __version__ as __version__

__all__ = [
    "RUN_CONTROL",
    "Learner",
    "RunConfig",
    "check_config",
    "run",
    "AbstractVelocityField",
    "CSVLogger",
    "CheckpointError",
    "EvalResult",
    "ExtraWriters",
    "NonFiniteLossError",
    "check_finite",
    "evaluate",
    "load_checkpoint",
    "plot_learning_curve",
    "progress",
    "fetch_to_host",
    "init_distributed",
    "jit_block",
    "optimizer_step",
    "order_after",
    "restore_config",
    "replicate",
    "same_placement",
    "init_seeds",
    "seed_mesh",
    "shard_seeds",
    "save_checkpoint",
    "save_video",
    "scan_block",
    "train_loop",
    "EnsembleCritic",
    "FlowPath",
    "FourierTimeEmbedding",
    "Interval",
    "JointCritic",
    "MLP",
    "OneStepPolicy",
    "Reversal",
    "VelocityField",
    "chunk_mask",
    "confidence_interval",
    "data",
    "discounted_window_sum",
    "ensemble_critic",
    "ensemble_lcb",
    "ensemble_mean",
    "ensemble_min",
    "euler_path",
    "euler_sample",
    "expanded_td_target",
    "expectile_loss",
    "flow_matching_draws",
    "flow_matching_loss",
    "flow_step",
    "fql_distillation_loss",
    "fql_q_loss",
    "freeze",
    "interpolant",
    "joint_critic",
    "lambda_returns",
    "n_step_bootstrapped_returns",
    "one_hop_value_loss",
    "periodic_update",
    "polyak_update",
    "reversal_depths",
    "reverse_flow",
    "rql_window_target",
    "window_valid",
]
