"""OGBench dataset names: the families flowrl knows, their official sizes, and the parser that
maps a name to its dataset files' stem exactly as `ogbench.make_env_and_datasets` does."""

from __future__ import annotations

import dataclasses
import re

# Environment families OGBench ships, and the dataset types each one has.
_MANIP_TYPES = ("play", "noisy")
_FAMILIES: dict[str, tuple[str, ...]] = {
    **{f"cube-{n}": _MANIP_TYPES for n in ("single", "double", "triple", "quadruple", "octuple")},
    "scene": _MANIP_TYPES,
    **{f"puzzle-{n}": _MANIP_TYPES for n in ("3x3", "4x4", "4x5", "4x6")},
    **{f"pointmaze-{m}": ("navigate", "stitch") for m in ("medium", "large", "giant", "teleport")},
    **{
        f"{a}maze-{m}": ("navigate", "stitch", "explore")
        for a in ("ant", "humanoid")
        for m in ("medium", "large", "giant", "teleport")
    },
    "antsoccer-arena": ("navigate", "stitch"),
    "antsoccer-medium": ("navigate", "stitch"),
    **{f"powderworld-{m}": ("play",) for m in ("easy", "medium", "hard")},
}
_TYPES = ("play", "noisy", "navigate", "stitch", "explore")

# Official episode counts and lengths, from OGBench's data_gen_scripts/commands.sh.
_OFFICIAL_EPISODES = {
    "cube-single": 1000,
    "cube-double": 1000,
    "cube-triple": 3000,
    "cube-quadruple": 5000,
    "scene": 1000,
    "puzzle-3x3": 1000,
    "puzzle-4x4": 1000,
    "puzzle-4x5": 3000,
    "puzzle-4x6": 5000,
}

_NAME_RE = re.compile(
    r"^(?P<visual>visual-)?(?P<family>[a-z0-9]+(?:-[a-z0-9]+)??)-(?P<type>"
    + "|".join(_TYPES)
    + r")(?P<size>-\d+[mb])?"
    r"(?P<single>-singletask(?:-task(?P<task>\d+))?)?"
    r"(?P<oraclerep>-oraclerep)?"
    r"-(?P<version>v\d+)$"
)


@dataclasses.dataclass(frozen=True)
class OGBenchName:
    """A parsed OGBench dataset name.

    **Arguments:**

    - `name`: the full name, e.g. `cube-single-play-singletask-task2-v0`.
    - `env_family`: e.g. `cube-single`, `scene`, `puzzle-3x3`, `pointmaze-medium`.
    - `dataset_type`: `play`, `noisy`, `navigate`, `stitch` or `explore`.
    - `dataset`: the dataset files' stem, e.g. `cube-single-play-v0` (the same mapping as
      `ogbench.make_env_and_datasets`).
    - `task`: the task number, or `None` for the default task (or a goal-conditioned name).
    - `singletask`: whether the name asks for reward-labelled single-task data.
    - `visual`: whether it is a pixel-based (`visual-`) dataset.
    - `size`: `None`, or the suffix of a large sharded dataset such as `100m`.
    - `version`: e.g. `v0`.
    """

    name: str
    env_family: str
    dataset_type: str
    dataset: str
    task: int | None
    singletask: bool
    visual: bool
    size: str | None
    version: str

    @property
    def domain(self) -> str:
        """`cube`, `scene`, `puzzle`, `pointmaze`, `antmaze`, `humanoidmaze`, `antsoccer` or
        `powderworld`."""
        return self.env_family.split("-")[0]

    @property
    def official_episodes(self) -> int:
        """The official number of training episodes (validation adds a tenth)."""
        if self.env_family in _OFFICIAL_EPISODES:
            return _OFFICIAL_EPISODES[self.env_family]
        if self.dataset_type == "stitch":
            return 5000
        return 500 if self.env_family.endswith("giant") else 1000

    @property
    def official_steps(self) -> int:
        """The official number of rows per episode (one more than the number of actions)."""
        if self.dataset_type == "stitch":
            return 201
        if self.domain == "humanoidmaze":
            return 4001 if self.env_family.endswith("giant") else 2001
        return 2001 if self.env_family.endswith("giant") else 1001

    @property
    def rebuildable(self) -> bool:
        """Whether `python -m flowrl.data.rebuild` can make this dataset (scripted oracles only:
        state-based cube/scene/puzzle play and noisy data, pointmaze navigate and stitch)."""
        if self.visual or self.size is not None:
            return False
        if self.domain in ("cube", "scene", "puzzle"):
            return self.dataset_type in _MANIP_TYPES
        if self.domain == "pointmaze":
            return self.dataset_type in ("navigate", "stitch")
        return False

    @property
    def needs_expert(self) -> bool:
        """Whether the official data come from trained expert policies (ant, humanoid, soccer)."""
        return self.domain in ("antmaze", "humanoidmaze", "antsoccer")


def known_families() -> list[str]:
    """The OGBench environment families flowrl recognises.

    **Returns:** a sorted list such as `['antmaze-giant', ..., 'cube-single', ..., 'scene']`.
    """
    return sorted(_FAMILIES)


def _dataset_stem(name: str) -> str:
    # The stem, computed the way ogbench.make_env_and_datasets computes it.
    splits = name.split("-")
    if "singletask" in splits:
        pos = splits.index("singletask")
        return "-".join(splits[:pos] + splits[-1:])
    if "oraclerep" in splits:
        return "-".join(splits[:-2] + splits[-1:])
    return name


def parse_ogbench_name(name: str) -> OGBenchName:
    """Parse an OGBench dataset name, checking that the family and dataset type exist.

    The dataset stem follows `ogbench.make_env_and_datasets` exactly: the words `singletask` and
    `taskN` are dropped, so `cube-single-play-singletask-task2-v0` reads `cube-single-play-v0`.

    **Arguments:**

    - `name`: a dataset name, with or without `-singletask[-taskN]`.

    **Returns:** a [`flowrl.data.OGBenchName`][].

    **Raises:** `ValueError` for an unknown family or dataset type, listing the known ones.
    """
    m = _NAME_RE.match(name)
    family = m.group("family") if m else None
    if m is None or family not in _FAMILIES:
        raise ValueError(
            f"unknown OGBench dataset name {name!r}: expected "
            f"'<family>-<type>[-singletask[-taskN]]-v0' with family one of "
            f"{', '.join(known_families())} (optionally prefixed 'visual-') and type one of "
            f"{', '.join(_TYPES)}; for example 'cube-single-play-singletask-task2-v0'"
        )
    dtype = m.group("type")
    if dtype not in _FAMILIES[family]:
        raise ValueError(
            f"unknown OGBench dataset name {name!r}: family {family!r} has dataset types "
            f"{', '.join(_FAMILIES[family])}, not {dtype!r}"
        )
    if m.group("single") and m.group("oraclerep"):
        raise ValueError(f"{name!r}: 'singletask' and 'oraclerep' cannot be combined")
    task = m.group("task")
    return OGBenchName(
        name=name,
        env_family=family,
        dataset_type=dtype,
        dataset=_dataset_stem(name),
        task=int(task) if task is not None else None,
        singletask=m.group("single") is not None,
        visual=m.group("visual") is not None,
        size=m.group("size")[1:] if m.group("size") else None,
        version=m.group("version"),
    )
