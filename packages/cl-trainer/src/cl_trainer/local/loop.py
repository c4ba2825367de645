"""The single-process RL loop: veRL's dataflow and algorithm functions without Ray, FSDP or vLLM.

Order per step follows ``RayPPOTrainer.fit`` (veRL 0.9.1): generate ``rollout.n`` responses per
prompt, score them with the configured reward function, recompute old log-probs (and the
reference's when KL is used), apply the in-reward KL penalty, compute advantages with
``core_algos``, update the actor on mini-batches with ``core_algos``' policy loss, then save,
validate and log through veRL's ``Tracking`` with veRL's metric helpers.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.metric_utils import (
    compute_data_metrics,
    compute_throughout_metrics,
    compute_timing_metrics,
)
from verl.trainer.ppo.ray_trainer import apply_kl_penalty as verl_apply_kl_penalty
from verl.trainer.ppo.ray_trainer import compute_advantage as verl_compute_advantage
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.utils.metric import reduce_metrics
from verl.utils.reward_score import default_compute_score
from verl.utils.torch_functional import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
)
from verl.utils.tracking import Tracking

from cl_rundir.layout import GREEDY_GENERATIONS
from cl_trainer import private_api
from cl_trainer.local import checkpoint, dumps, rollout, val_cache
from cl_trainer.local.config import LocalConfigError, cpu_threads
from cl_trainer.local.data import Example, Sampler, data_seed, load_examples
from cl_trainer.reference import REFERENCE_MODEL_ENV


@contextmanager
def timer(name: str, timing: dict[str, float]):
    start = time.perf_counter()
    yield
    timing[name] = timing.get(name, 0.0) + time.perf_counter() - start


def device(name: str) -> torch.device:
    """veRL's ``trainer.device``: ``cuda`` (one GPU) or ``cpu``."""
    if name == "cuda" and not torch.cuda.is_available():
        raise LocalConfigError(
            "trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu"
        )
    if name not in ("cuda", "cpu"):
        raise LocalConfigError(f"trainer.device={name}: the local backend runs on cuda or cpu")
    return torch.device(name)


def load_reward_fn(cfg: DictConfig) -> Any:
    """The function veRL's reward manager would call: the custom one, else veRL's default."""
    return get_custom_reward_fn(cfg) or default_compute_score


def score(
    reward_fn: Any, tokenizer: Any, examples: list[Example], batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, list[Any]]]:
    """Token-level scores (the reward on the last response token) as veRL's naive manager does."""
    responses, mask = batch["responses"], batch["response_mask"]
    scores = torch.zeros(responses.shape, dtype=torch.float32)
    extras: dict[str, list[Any]] = defaultdict(list)
    for i, ex in enumerate(examples):
        length = int(mask[i].sum())
        text = tokenizer.decode(responses[i, :length], skip_special_tokens=True)
        result = reward_fn(
            data_source=ex.data_source,
            solution_str=text,
            ground_truth=ex.reward_model["ground_truth"],
            extra_info=dict(ex.extra_info),
        )
        if isinstance(result, dict):
            value = float(result["score"])
            for key, val in result.items():
                extras[key].append(val)
        else:
            value = float(result)
            extras["acc"].append(value)
        if length > 0:
            scores[i, length - 1] = value
    return scores, dict(extras)


def _proto(batch: dict[str, Any], keys: tuple[str, ...], uids: np.ndarray | None = None) -> Any:
    """The slice of our dict batch that veRL's trainer functions read, as a ``DataProto``."""
    non_tensors = {"uid": np.asarray(uids, dtype=object)} if uids is not None else None
    return DataProto.from_dict(tensors={k: batch[k] for k in keys}, non_tensors=non_tensors)


def compute_advantage(batch: dict[str, Any], uids: np.ndarray, algo: DictConfig) -> None:
    """veRL's own ``ray_trainer.compute_advantage`` (critic-free estimators) on this batch."""
    data = verl_compute_advantage(
        _proto(batch, ("token_level_rewards", "response_mask"), uids),
        adv_estimator=algo.adv_estimator,
        gamma=algo.gamma,
        lam=algo.lam,
        norm_adv_by_std_in_grpo=algo.get("norm_adv_by_std_in_grpo", True),
        config=algo,
    )
    batch["advantages"], batch["returns"] = data.batch["advantages"], data.batch["returns"]


def apply_kl_penalty(batch: dict[str, Any], kl_ctrl: Any, kl_penalty: str) -> dict[str, float]:
    """veRL's own ``ray_trainer.apply_kl_penalty``: rewards = scores - beta * KL(old || ref)."""
    keys = ("token_level_scores", "old_log_probs", "ref_log_prob", "response_mask")
    data, metrics = verl_apply_kl_penalty(_proto(batch, keys), kl_ctrl, kl_penalty=kl_penalty)
    batch["token_level_rewards"] = data.batch["token_level_rewards"]
    return metrics


class LocalTrainer:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.device = device(str(cfg.trainer.device))
        actor_cfg = cfg.actor_rollout_ref.actor
        self.model_path = str(cfg.actor_rollout_ref.model.path)
        if not Path(self.model_path).exists():
            raise LocalConfigError(
                f"actor_rollout_ref.model.path={self.model_path} does not exist; the local backend "
                "loads models from disk only"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        template = cfg.actor_rollout_ref.model.get("custom_chat_template")
        if template:  # as veRL's HFModelConfig does
            self.tokenizer.chat_template = template
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = self._load(self.model_path)
        self.use_ref = bool(actor_cfg.use_kl_loss or cfg.algorithm.use_kl_in_reward)
        self.ref = self._reference() if self.use_ref else None
        self.kl_ctrl = (
            core_algos.get_kl_controller(cfg.algorithm.kl_ctrl)
            if cfg.algorithm.use_kl_in_reward
            else None
        )
        self.reward_fn = load_reward_fn(cfg)

        data = cfg.data
        self.train = load_examples(
            data.train_files, self.tokenizer, data, int(data.get("train_max_samples", -1))
        )
        self.val = load_examples(
            data.val_files, self.tokenizer, data, int(data.get("val_max_samples", -1))
        )
        bsz = int(data.get("gen_batch_size") or data.train_batch_size)
        self.sampler = Sampler(
            len(self.train), bsz, data_seed(data), bool(data.get("shuffle", True))
        )
        if len(self.sampler) == 0:
            raise LocalConfigError(
                f"data.train_batch_size={bsz} > {len(self.train)} training prompts; lower it"
            )
        total = len(self.sampler) * int(cfg.trainer.total_epochs)
        if cfg.trainer.total_training_steps is not None:
            total = int(cfg.trainer.total_training_steps)
        self.total_steps = total

        optim_cfg = actor_cfg.optim
        self.optim = torch.optim.AdamW(
            self.model.parameters(),
            lr=float(optim_cfg.lr),
            betas=tuple(optim_cfg.get("betas", (0.9, 0.999))),
            weight_decay=float(optim_cfg.get("weight_decay", 0.01)),
        )
        self.scheduler = self._scheduler(optim_cfg)
        self.loss_cfg = OmegaConf.create(OmegaConf.to_container(actor_cfg, resolve=True))
        with open_dict(self.loss_cfg):
            self.loss_cfg.global_batch_info = {}
        self.global_steps = 0

    def _load(self, path: str) -> Any:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(self.device)

    def _reference(self) -> torch.nn.Module:
        """The KL penalty's frozen reference: the actor's start (loaded again: faster than
        deep-copying the module tree), or ``--reference base``'s model
        (``cl_trainer.reference``)."""
        path = os.environ.get(REFERENCE_MODEL_ENV)
        if path:
            print(f"cl-trainer: reference policy from {path}")
        return self._load(path or self.model_path).eval().requires_grad_(False)

    def _scheduler(self, optim_cfg: DictConfig) -> Any:
        warmup = int(optim_cfg.get("lr_warmup_steps", -1))
        if warmup <= 0:
            warmup = int(float(optim_cfg.get("lr_warmup_steps_ratio", 0.0)) * self.total_steps)
        kind = optim_cfg.get("lr_scheduler_type") or optim_cfg.get("warmup_style") or "constant"
        if kind == "cosine":
            return get_cosine_schedule_with_warmup(
                self.optim,
                warmup,
                self.total_steps,
                min_lr_ratio=float(optim_cfg.get("min_lr_ratio", 0.0)),
            )
        return get_constant_schedule_with_warmup(self.optim, warmup)

    # ----- checkpoints -------------------------------------------------------------------------

    @property
    def ckpt_root(self) -> Path:
        return Path(str(self.cfg.trainer.default_local_dir))

    def save_checkpoint(self) -> None:
        keep = self.cfg.trainer.get("max_actor_ckpt_to_keep")
        checkpoint.save(
            self.ckpt_root,
            self.global_steps,
            self.model,
            self.tokenizer,
            optim={
                "optimizer": self.optim.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(),
            },
            extra={"kl_coef": self.kl_ctrl.value if self.kl_ctrl else None},
            data=self.sampler.state_dict(),
            keep=int(keep) if keep else None,
        )

    def load_checkpoint(self) -> None:
        """veRL's ``_load_checkpoint``: auto (latest, if any), resume_path, or disable."""
        mode = self.cfg.trainer.resume_mode
        if mode == "disable":
            return
        if mode == "resume_path":
            path = Path(str(self.cfg.trainer.resume_from_path))
        else:
            path = checkpoint.latest(self.ckpt_root)
            if path is None:
                # veRL says "Training from scratch"; in a curriculum the model is a chained one.
                print(f"No checkpoint in {self.ckpt_root}: starting from {self.model_path}")
                return
        print(f"Load from checkpoint folder: {path}")
        state = checkpoint.load(path)
        self.global_steps = state.step
        loaded = AutoModelForCausalLM.from_pretrained(state.model_dir, dtype=torch.float32)
        self.model.load_state_dict(loaded.state_dict())
        self.optim.load_state_dict(state.optim["optimizer"])
        self.scheduler.load_state_dict(state.optim["lr_scheduler"])
        if self.kl_ctrl is not None and state.extra.get("kl_coef") is not None:
            self.kl_ctrl.value = state.extra["kl_coef"]
        checkpoint.set_rng_state(state.extra["rng"])
        if state.data is not None and state.step % len(self.sampler) != 0:
            self.sampler.load_state_dict(state.data)
        else:
            self.sampler.epoch, self.sampler.batch = state.step // len(self.sampler), 0

    # ----- rollout, reward, update -------------------------------------------------------------

    def _generate(
        self,
        examples: list[Example],
        sampling: Any,
        do_sample: bool,
        log_prob_temperature: float | None = None,
    ) -> dict[str, Any]:
        self.model.eval()
        return rollout.generate(
            self.model,
            self.tokenizer,
            [ex.prompt_ids for ex in examples],
            sampling,
            do_sample,
            int(self.cfg.data.max_prompt_length),
            int(self.cfg.data.max_response_length),
            log_prob_temperature=log_prob_temperature,
        )

    def validate(self) -> dict[str, Any]:
        """veRL's ``_validate``: ``val_kwargs`` sampling, metrics per data source, and every answer
        dumped to ``trainer.validation_data_dir`` by veRL's own writer.

        As in veRL's agent loop, ``val_kwargs.temperature`` alone decides greedy (0) or sampled
        decoding; ``do_sample`` is not read.
        """
        val_kwargs = self.cfg.actor_rollout_ref.rollout.val_kwargs
        n = int(val_kwargs.get("n", 1))
        uids = [str(uuid.uuid4()) for _ in self.val]
        examples = [ex for ex in self.val for _ in range(n)]
        sample_uids = [u for u in uids for _ in range(n)]
        dump = self.cfg.trainer.get("validation_data_dir")
        kept = Path(str(dump)).parent / GREEDY_GENERATIONS if dump else None
        digest = val_cache.key(self.model, examples, self.cfg) if kept else None
        batch = val_cache.load(kept, digest) if kept and digest else None
        if batch is None:
            batch = self._generate(examples, val_kwargs, True)
            if kept and digest:
                val_cache.save(kept, digest, batch)
        else:
            print(f"Validation answers reused: the same weights answered greedily in {kept}")
        scores, extras = score(self.reward_fn, self.tokenizer, examples, batch)
        rewards = scores.sum(-1).tolist()
        infos: dict[str, list[Any]] = {"reward": rewards, **extras}
        if dump:
            # veRL's dump key per answer: <prompt uid>_<sample>_<output of the agent loop>
            keys = {**extras, "uid": [f"{u}_{i % n}_0" for i, u in enumerate(sample_uids)]}
            dumps.write(
                self.tokenizer, examples, batch, rewards, keys, str(dump), self.global_steps
            )
        data_sources = [ex.data_source for ex in examples]
        return private_api.val_metrics(data_sources, sample_uids, infos)

    def _update_actor(self, batch: dict[str, Any]) -> dict[str, list[float]]:
        """Mini-batch PPO epochs with ``core_algos``' policy loss, KL loss and ``agg_loss``."""
        actor = self.cfg.actor_rollout_ref.actor
        n = int(self.cfg.actor_rollout_ref.rollout.n)
        mini = int(actor.ppo_mini_batch_size) * n
        temperature = float(self.cfg.actor_rollout_ref.rollout.temperature)
        with_entropy = bool(actor.get("calculate_entropy", False) or actor.entropy_coeff != 0)
        policy_loss_fn = core_algos.get_policy_loss_fn(
            actor.policy_loss.get("loss_mode", "vanilla")
        )
        clip = float(actor.optim.get("clip_grad", actor.get("grad_clip", 1.0)))
        size = batch["responses"].shape[0]
        generator = torch.Generator().manual_seed(
            int(actor.get("data_loader_seed", 42)) + self.global_steps
        )
        metrics: dict[str, list[float]] = defaultdict(list)
        self.model.train()
        for _ in range(int(actor.ppo_epochs)):
            order = (
                torch.randperm(size, generator=generator)
                if actor.get("shuffle", False)
                else torch.arange(size)
            )
            for start in range(0, size, mini):
                idx = order[start : start + mini]
                mb = {k: v[idx] for k, v in batch.items() if isinstance(v, torch.Tensor)}
                mask = mb["response_mask"].to(self.device).bool()
                logp, entropy = rollout.log_probs(self.model, mb, temperature, with_entropy)
                self.loss_cfg.global_batch_info = {
                    "dp_size": 1,
                    "batch_num_tokens": int(mask.sum()),
                    "global_batch_size": int(mask.shape[0]),
                    "loss_scale_factor": actor.get("loss_scale_factor"),
                }
                pg_loss, pg_metrics = policy_loss_fn(
                    old_log_prob=mb["old_log_probs"].to(self.device),
                    log_prob=logp,
                    advantages=mb["advantages"].to(self.device),
                    response_mask=mask,
                    loss_agg_mode=actor.loss_agg_mode,
                    config=self.loss_cfg,
                    rollout_is_weights=None,
                )
                loss = pg_loss
                for key, val in pg_metrics.items():
                    metrics[key].append(float(val))
                metrics["actor/pg_loss"].append(pg_loss.item())
                if entropy is not None:
                    entropy_loss = core_algos.agg_loss(
                        loss_mat=entropy,
                        loss_mask=mask,
                        loss_agg_mode=actor.loss_agg_mode,
                        **self.loss_cfg.global_batch_info,
                    )
                    loss = loss - float(actor.entropy_coeff) * entropy_loss
                    metrics["actor/entropy_loss"].append(entropy_loss.item())
                if actor.use_kl_loss:
                    kld = core_algos.kl_penalty(
                        logprob=logp,
                        ref_logprob=mb["ref_log_prob"].to(self.device),
                        kl_penalty=actor.kl_loss_type,
                    )
                    kl_loss = core_algos.agg_loss(
                        loss_mat=kld,
                        loss_mask=mask,
                        loss_agg_mode=actor.loss_agg_mode,
                        **self.loss_cfg.global_batch_info,
                    )
                    loss = loss + kl_loss * float(actor.kl_loss_coef)
                    metrics["actor/kl_loss"].append(kl_loss.item())
                    metrics["actor/kl_coef"].append(float(actor.kl_loss_coef))
                self.optim.zero_grad()
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                if torch.isfinite(grad_norm):
                    self.optim.step()
                else:
                    print(f"WARN: grad_norm is not finite: {grad_norm}; skipping the update")
                metrics["actor/grad_norm"].append(grad_norm.item())
        metrics["actor/lr"].append(self.scheduler.get_last_lr()[0])
        self.scheduler.step()
        self.model.eval()
        return metrics

    def step(self) -> dict[str, Any]:
        cfg = self.cfg
        rollout_cfg = cfg.actor_rollout_ref.rollout
        n = int(rollout_cfg.n)
        timing: dict[str, float] = {}
        metrics: dict[str, Any] = {}
        prompts = [self.train[i] for i in self.sampler.next_batch()]
        epoch = self.sampler.epoch
        examples = [ex for ex in prompts for _ in range(n)]
        uids = np.array(
            [u for u in (str(uuid.uuid4()) for _ in prompts) for _ in range(n)], dtype=object
        )
        temperature = float(rollout_cfg.temperature)
        with timer("step", timing):
            with timer("gen", timing):
                batch: dict[str, Any] = self._generate(examples, rollout_cfg, True, temperature)
            with timer("reward", timing):
                batch["token_level_scores"], _ = score(
                    self.reward_fn, self.tokenizer, examples, batch
                )
            with timer("old_log_prob", timing):
                # The policy that drew the responses is the one whose log-probs veRL recomputes
                # here (no update in between), and generation computed them from the same logits,
                # as veRL's actor would (``rollout.generate``): veRL's bypass mode, exact here.
                batch["old_log_probs"] = batch.pop("rollout_log_probs")
                entropy = batch.pop("rollout_entropy")
                actor = cfg.actor_rollout_ref.actor
                metrics["actor/entropy"] = core_algos.agg_loss(
                    loss_mat=entropy.cpu(),
                    loss_mask=batch["response_mask"],
                    loss_agg_mode=actor.loss_agg_mode,
                    loss_scale_factor=actor.get("loss_scale_factor"),
                ).item()
            if self.ref is not None:
                with timer("ref", timing), torch.no_grad():
                    batch["ref_log_prob"] = rollout.log_probs(self.ref, batch, temperature, False)[
                        0
                    ].cpu()
            with timer("adv", timing):
                if cfg.algorithm.use_kl_in_reward:
                    metrics.update(apply_kl_penalty(batch, self.kl_ctrl, cfg.algorithm.kl_penalty))
                else:
                    batch["token_level_rewards"] = batch["token_level_scores"]
                compute_advantage(batch, uids, cfg.algorithm)
            with timer("update_actor", timing):
                actor_metrics = self._update_actor(batch)
            is_last = self.global_steps >= self.total_steps
            save_freq = int(cfg.trainer.save_freq)
            if save_freq > 0 and (is_last or self.global_steps % save_freq == 0):
                with timer("save_checkpoint", timing):
                    self.save_checkpoint()
            metrics.update(reduce_metrics(actor_metrics))
        test_freq = int(cfg.trainer.test_freq)
        if test_freq > 0 and (is_last or self.global_steps % test_freq == 0):
            with timer("testing", timing):
                metrics.update(self.validate())
        metrics.update({"training/global_step": self.global_steps, "training/epoch": epoch})
        dump = cfg.trainer.get("rollout_data_dir")
        if dump:  # veRL dumps every training sample after the step's validation
            rewards = batch["token_level_scores"].sum(-1).tolist()
            # veRL's sample keys: {prompt uid}_{rollout}_{output}
            extras = {"uid": [f"{u}_{i % n}_0" for i, u in enumerate(uids)]}
            dumps.write(
                self.tokenizer, examples, batch, rewards, extras, str(dump), self.global_steps
            )
        proto = DataProto.from_dict(
            tensors={k: v for k, v in batch.items() if isinstance(v, torch.Tensor)},
            non_tensors={"uid": uids},
            meta_info={"global_token_num": batch["attention_mask"].sum(-1).tolist()},
        )
        metrics.update(compute_data_metrics(batch=proto, use_critic=False))
        metrics.update(compute_timing_metrics(batch=proto, timing_raw=timing))
        metrics.update(compute_throughout_metrics(batch=proto, timing_raw=timing, n_gpus=1))
        if self.device.type == "cuda":  # veRL's actor reports the same two keys
            metrics["perf/max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
            metrics["perf/max_memory_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
        return metrics

    def fit(self) -> None:
        cfg = self.cfg
        logger = Tracking(
            project_name=cfg.trainer.project_name,
            experiment_name=cfg.trainer.experiment_name,
            default_backend=OmegaConf.to_container(cfg.trainer.logger, resolve=True)
            if not isinstance(cfg.trainer.logger, str)
            else cfg.trainer.logger,
            config=OmegaConf.to_container(cfg, resolve=True),
        )
        print(f"Total training steps: {self.total_steps}")
        self.load_checkpoint()
        if cfg.trainer.get("val_before_train", True):
            val_metrics = self.validate()
            print(f"Initial validation metrics: {val_metrics}")
            logger.log(data=val_metrics, step=self.global_steps)
            if cfg.trainer.get("val_only", False):
                return
        if self.global_steps >= self.total_steps:
            print(f"Already at step {self.global_steps} of {self.total_steps}; nothing to train")
            return
        self.global_steps += 1
        while True:
            metrics = self.step()
            logger.log(data=metrics, step=self.global_steps)
            if self.global_steps >= self.total_steps:
                break
            self.global_steps += 1
        if int(cfg.trainer.save_freq) <= 0:
            self.save_checkpoint()


def run(cfg: DictConfig) -> None:
    torch.set_num_threads(cpu_threads())
    torch.manual_seed(int(cfg.actor_rollout_ref.actor.get("data_loader_seed", 42)))
    LocalTrainer(cfg).fit()
