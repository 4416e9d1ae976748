"""flowrl.experiment: the host-side machinery that turns a learner into runs.

The learner protocol and its registry, run configs and presets, the driver and the training
loop, logging and progress, checkpoints and run records, evaluation, several seeds, devices and
hosts, and summaries over seeds. The maths (`import flowrl`) never imports this package.
"""

from ._checkpoints import CheckpointError as CheckpointError
from ._checkpoints import latest_checkpoint as latest_checkpoint
from ._checkpoints import load_checkpoint as load_checkpoint
from ._checkpoints import save_checkpoint as save_checkpoint
from ._cli import main as main
from ._config import RUN_CONTROL as RUN_CONTROL
from ._config import RUN_RECORD as RUN_RECORD
from ._config import ConfigError as ConfigError
from ._config import RunConfig as RunConfig
from ._config import SolverName as SolverName
from ._config import check_config as check_config
from ._config import env_family as env_family
from ._config import fill_presets as fill_presets
from ._config import make_mixing as make_mixing
from ._config import make_solver as make_solver
from ._config import resolve_online as resolve_online
from ._config import restore_config as restore_config
from ._distributed import fetch_to_host as fetch_to_host
from ._distributed import init_distributed as init_distributed
from ._distributed import init_seeds as init_seeds
from ._distributed import replicate as replicate
from ._distributed import same_placement as same_placement
from ._distributed import seed_mesh as seed_mesh
from ._distributed import shard_seeds as shard_seeds
from ._driver import load_run_data as load_run_data
from ._driver import run as run
from ._evaluation import EvalResult as EvalResult
from ._evaluation import batch_policy as batch_policy
from ._evaluation import evaluate as evaluate
from ._learner import Learner as Learner
from ._learner import get_learner as get_learner
from ._learner import load_learners as load_learners
from ._learner import make_block as make_block
from ._learner import make_policy as make_policy
from ._learner import make_validation as make_validation
from ._learner import register as register
from ._learner import registered as registered
from ._logging import CSVLogger as CSVLogger
from ._logging import ExtraWriters as ExtraWriters
from ._logging import plot_learning_curve as plot_learning_curve
from ._logging import progress as progress
from ._logging import save_video as save_video
from ._loop import LoopOptions as LoopOptions
from ._loop import NonFiniteLossError as NonFiniteLossError
from ._loop import RunData as RunData
from ._loop import check_finite as check_finite
from ._loop import train_loop as train_loop
from ._online import Actors as Actors
from ._online import OnlineCheckpoint as OnlineCheckpoint
from ._online import OnlineOptions as OnlineOptions
from ._online import OnlinePhase as OnlinePhase
from ._online import OnlineState as OnlineState
from ._online import make_online as make_online
from ._online import online_episode_seed as online_episode_seed
from ._online import run_online as run_online
from ._records import RunRecord as RunRecord
from ._records import read_run as read_run
from ._stats import Interval as Interval
from ._stats import confidence_interval as confidence_interval
from ._sweep import Sweep as Sweep
from ._sweep import Swept as Swept
from ._sweep import init_members as init_members
from ._sweep import parse_sweep as parse_sweep
from ._sweep import swept as swept

__all__ = [
    "RUN_CONTROL",
    "RUN_RECORD",
    "Actors",
    "CSVLogger",
    "CheckpointError",
    "ConfigError",
    "EvalResult",
    "ExtraWriters",
    "Interval",
    "Learner",
    "LoopOptions",
    "NonFiniteLossError",
    "OnlineCheckpoint",
    "OnlineOptions",
    "OnlinePhase",
    "OnlineState",
    "RunConfig",
    "RunData",
    "RunRecord",
    "SolverName",
    "Sweep",
    "Swept",
    "batch_policy",
    "check_config",
    "check_finite",
    "confidence_interval",
    "env_family",
    "evaluate",
    "fetch_to_host",
    "fill_presets",
    "get_learner",
    "init_distributed",
    "init_members",
    "init_seeds",
    "latest_checkpoint",
    "load_checkpoint",
    "load_learners",
    "load_run_data",
    "main",
    "make_block",
    "make_mixing",
    "make_online",
    "make_policy",
    "make_solver",
    "make_validation",
    "parse_sweep",
    "online_episode_seed",
    "plot_learning_curve",
    "progress",
    "read_run",
    "register",
    "registered",
    "replicate",
    "resolve_online",
    "restore_config",
    "run",
    "run_online",
    "same_placement",
    "save_checkpoint",
    "save_video",
    "seed_mesh",
    "shard_seeds",
    "swept",
    "train_loop",
]
