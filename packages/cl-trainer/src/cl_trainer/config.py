"""Every trainer setting, declared once: a field of :class:`TrainerConfig` whose metadata carries
its help text, command-line flag and the veRL Hydra key(s) it sets.

The CLI's options (``cl_trainer.cli``), the presets' keys (``cl_trainer.presets``), run.json's
``config`` and the veRL overrides (``cl_trainer.overrides``) are all derived from these fields, so
a new setting is one new field here. :func:`resolve_config` layers defaults, a preset and the
user's options, then computes the few derived values.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_rundir.layout import BASE_MODEL_DIR, PROJECT
from cl_trainer.errors import TrainerError
from cl_trainer.presets import PRESETS, TINY_MODEL_SENTINEL
from cl_trainer.remedies import REMEDIES, Remedy, parse, parse_all
from countdown_data.dataset import DEFAULT_DATA_DIR
from countdown_data.groups import GROUPS, check_group


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    minimum: int | None = None,
    verl: tuple[str, ...] = (),
    compared: bool = True,
    cli: bool = True,
) -> Any:
    """A :class:`TrainerConfig` field with what the CLI and veRL need to know about it.

    ``verl``: Hydra keys the value is passed to unchanged (keys under ``critic.`` only when the
    algorithm trains a critic). ``compared=False``: may change between a run and its resume
    without changing what is trained. ``cli=False``: set by presets only. A tuple default
    stands for a list setting (each config gets its own list).
    """
    meta = {
        "help": help,
        "flag": flag,
        "choices": choices,
        "minimum": minimum,
        "verl": verl,
        "compared": compared,
        "cli": cli,
    }
    if isinstance(default, tuple):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"


@dataclass
class TrainerConfig:
    """Everything that decides what a curriculum run trains; stored as run.json ``config``.

    Defaults are the original experiments' settings (their 0.5b script); a preset lists only
    what differs.
    """

    size: str = setting(None, "Model preset.", choices=tuple(PRESETS))
    algo: str = setting("ppo", "RL algorithm.", choices=("ppo", "grpo"))
    backend: str = setting(
        "verl", "verl (Ray, FSDP, vLLM) or local (one process).", choices=("verl", "local")
    )
    device: str = setting(
        "cuda",
        "cuda, or cpu: the local backend's CPU run, or veRL's own trainer on the CPU (slow: for "
        "checking a configuration before spending GPU hours, not for training).",
        choices=("cuda", "cpu"),
        verl=("trainer.device",),
    )
    rounds: int = setting(3, "Rounds through all groups.", minimum=1)
    epochs: int = setting(15, "Epochs per stage.", minimum=1, verl=("trainer.total_epochs",))
    max_steps: int | None = setting(
        None,
        "Stop every stage after at most N steps (veRL's trainer.total_training_steps; default: "
        "all its epochs): a short first run.",
        minimum=1,
    )
    groups: list[str] = setting(GROUPS, "Comma-separated groups in curriculum order.")
    data_dir: str = setting(str(DEFAULT_DATA_DIR), "Output of `countdown-data gen`.")
    out: str | None = setting(None, "Run directory [runs/<size>].", compared=False)
    model: str = setting(
        "Qwen/Qwen2.5-0.5B", "Base model: HF directory or hub ID (env BASE_MODEL wins)."
    )
    n_gpus_per_node: int = setting(
        1, "GPUs per node.", minimum=1, verl=("trainer.n_gpus_per_node",)
    )
    nnodes: int = setting(1, "Nodes in the Ray cluster.", minimum=1, verl=("trainer.nnodes",))
    ray_address: str | None = setting(
        None, "Join an existing Ray cluster (`ray start`), e.g. HEAD:6379.", compared=False
    )
    tp: int = setting(
        1,
        "Rollout tensor-parallel size.",
        minimum=1,
        verl=(f"{ROLLOUT}.tensor_model_parallel_size",),
    )
    train_batch_size: int = setting(
        256, "Prompts per step.", minimum=1, verl=("data.train_batch_size",)
    )
    ppo_mini_batch_size: int = setting(
        16, "Prompts per PPO mini-batch.", minimum=1, verl=(f"{ACTOR}.ppo_mini_batch_size",)
    )
    ppo_micro_batch_size_per_gpu: int = setting(
        8,
        "Micro-batch per GPU (a preset's value is a cap: the largest divisor of the per-GPU "
        "mini-batch up to it).",
        flag="--micro-batch-per-gpu",
        minimum=1,
        verl=(
            f"{ACTOR}.ppo_micro_batch_size_per_gpu",
            f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu",
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
            "critic.ppo_micro_batch_size_per_gpu",
        ),
    )
    max_prompt_length: int = setting(
        256, "Prompt tokens.", minimum=1, verl=("data.max_prompt_length",)
    )
    max_response_length: int = setting(
        1024, "Response tokens.", minimum=1, verl=("data.max_response_length",)
    )
    rollout_n: int = setting(
        5, "GRPO samples per prompt (PPO: 1).", minimum=1, verl=(f"{ROLLOUT}.n",)
    )
    save_freq: int = setting(
        100, "Checkpoint every N steps (and at the end).", verl=("trainer.save_freq",)
    )
    test_freq: int = setting(
        100, "Validate every N steps (and at the end).", verl=("trainer.test_freq",)
    )
    val_max_samples: int = setting(
        -1,
        "Validation puzzles, drawn at random over all groups' test splits (-1: all of them).",
        verl=("data.val_max_samples",),
    )
    actor_lr: float = setting(1e-6, "Actor learning rate.", verl=(f"{ACTOR}.optim.lr",))
    critic_lr: float = setting(1e-5, "Critic learning rate (PPO).", verl=("critic.optim.lr",))
    entropy_coeff: float = setting(
        0.001, "Entropy bonus in the actor's loss.", verl=(f"{ACTOR}.entropy_coeff",)
    )
    gpu_memory_utilization: float = setting(
        0.6,
        "Fraction of GPU memory the rollout engine takes.",
        verl=(f"{ROLLOUT}.gpu_memory_utilization",),
    )
    critic_init: str = setting(
        "actor",
        "PPO critic at each stage's start: a fresh value head on the stage's starting actor "
        "(actor, as the original experiments) or the previous stage's critic (chain).",
        choices=("actor", "chain"),
    )
    between_stages: list[Remedy] = setting(
        (),
        "A remedy for plasticity loss applied between stages, name[:key=value,...] "
        "(repeatable; none by default): "
        + ", ".join(parse(name).spec for name in REMEDIES)
        + " (the defaults).",
    )
    keep_checkpoints: int = setting(
        0,
        "veRL checkpoints (weights, optimizer) kept once a stage is done; 0: only its final HF "
        "exports (metrics/, critics/), all that later stages and cl-eval read.",
        minimum=0,
        compared=False,
    )
    seed: int = setting(
        0,
        "Seed of data order, sampling and the tiny model's init.",
        verl=("data.seed", f"{ACTOR}.data_loader_seed", f"{ROLLOUT}.seed"),
    )
    wandb: bool = setting(True, "Log to W&B (else the console only).", compared=False)
    preset_overrides: list[str] = setting((), "The preset's own veRL overrides.", cli=False)
    overrides: list[str] = setting((), "veRL overrides for every stage (after `--`).", cli=False)

    @property
    def run_dir(self) -> Path:
        return Path(str(self.out))

    @property
    def n_gpus(self) -> int:
        return self.n_gpus_per_node * self.nnodes

    @property
    def uses_critic(self) -> bool:
        return self.algo == "ppo"

    @property
    def run_name(self) -> str:
        return f"{PROJECT}_{self.size}"

    def to_dict(self) -> dict[str, Any]:
        """run.json's ``config``: every setting as plain data (a remedy as its canonical spec)."""
        out = dataclasses.asdict(self)
        out["between_stages"] = [r.spec for r in self.between_stages]
        return out


SETTINGS: tuple[dataclasses.Field, ...] = dataclasses.fields(TrainerConfig)
SETTING_TYPES: dict[str, Any] = typing.get_type_hints(TrainerConfig)
NOT_COMPARED: tuple[str, ...] = tuple(f.name for f in SETTINGS if not f.metadata["compared"])
"""Keys that may change between a run and its resume without changing what is trained."""


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def preset_value(size: str, name: str) -> Any:
    """A setting's value under a preset before the user's options: the preset's, else default."""
    preset = PRESETS[size]
    if name in preset:
        return preset[name]
    return default_of(next(f for f in SETTINGS if f.name == name))


def largest_divisor_at_most(n: int, cap: int) -> int:
    """Largest d <= cap with n % d == 0 (1 at worst)."""
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def resolve_config(size: str, **given: Any) -> TrainerConfig:
    """Defaults, then the preset's values, then ``given`` (``None`` means not given); then derived.

    Derived: ``out`` (runs/<size>), the model (``BASE_MODEL`` unless ``model`` is given), one
    device and no tensor parallelism on the local backend or the CPU, one rollout per prompt for
    PPO, the per-GPU micro-batch from its cap, absolute paths.
    """
    if size not in PRESETS:
        raise TrainerError(f"unknown size {size!r}; choose from {', '.join(PRESETS)}")
    unknown = set(given) - {f.name for f in SETTINGS}
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    given = {k: v for k, v in given.items() if v is not None}
    values = {f.name: preset_value(size, f.name) for f in SETTINGS} | given
    values["size"] = size
    if values["backend"] == "local" or values["device"] == "cpu":
        for name in ("n_gpus_per_node", "tp"):
            values[name] = given.get(name, 1)
    if values["algo"] == "ppo":
        values["rollout_n"] = 1
    if "ppo_micro_batch_size_per_gpu" not in given:
        per_gpu_mini = max(
            1,
            values["ppo_mini_batch_size"]
            * values["rollout_n"]
            // (values["n_gpus_per_node"] * values["nnodes"]),
        )
        values["ppo_micro_batch_size_per_gpu"] = largest_divisor_at_most(
            per_gpu_mini, values["ppo_micro_batch_size_per_gpu"]
        )
    if "model" not in given:
        values["model"] = os.environ.get("BASE_MODEL") or values["model"]
    try:
        values["groups"] = [check_group(g) for g in values["groups"]]
    except ValueError as exc:
        raise TrainerError(str(exc)) from None
    values["between_stages"] = parse_all(list(values["between_stages"]))
    out = Path(values["out"]) if values["out"] is not None else default_out(size)
    values["out"] = str(out.expanduser().resolve())
    values["data_dir"] = str(Path(values["data_dir"]).expanduser().resolve())
    values["model"] = _normalise_model(str(values["model"]))
    values["overrides"] = list(values["overrides"])
    values["preset_overrides"] = list(values["preset_overrides"])
    return TrainerConfig(**values)


def default_out(size: str) -> Path:
    """A run's directory without ``--out``: ``runs/<size>``."""
    return Path("runs") / size


def seed_out(out: Path | str, seed: int | str) -> str:
    """The directory of one seed's curriculum under ``--seeds``: ``<out>-s<seed>``
    (``seed="*"``: the glob of them all, for ``cl-eval compare``)."""
    return f"{out}-s{seed}"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(model: str) -> bool:
    """``owner/name`` that is not an existing local path: transformers downloads it."""
    return bool(_HUB_ID.match(model)) and not Path(model).exists()


def _normalise_model(model: str) -> str:
    """Local paths become absolute (stage commands run from anywhere); hub IDs stay as given."""
    if model == TINY_MODEL_SENTINEL or looks_like_hub_id(model):
        return model
    return str(Path(model).expanduser().resolve())


def tiny_model_dir(cfg: TrainerConfig) -> Path:
    """Where the tiny preset's base model is built (``cl_trainer.local.tiny``)."""
    return cfg.run_dir / BASE_MODEL_DIR


def base_model_path(cfg: TrainerConfig) -> str:
    """The first stage's model as passed to the backend (the tiny model's dir for ``tiny``)."""
    return str(tiny_model_dir(cfg)) if cfg.model == TINY_MODEL_SENTINEL else cfg.model
