"""A transformers rollout for veRL on CPU: server actor, replica and weight-sync adapter.

veRL 0.9.1 generates only through rollout *servers*: the v1 trainer starts them with
``LLMServerManager`` (``workers/rollout/llm_server.py``) from ``RolloutReplicaRegistry``
(``workers/rollout/replica.py``), and every agent loop calls ``server.generate.remote(...)``
(token ids in, ``TokenOutput`` out). Its only servers are vLLM, SGLang and TensorRT-LLM, none of
which runs here. The pieces below are the smallest server that keeps veRL's contract:

- ``HFGenerationServer``: a Ray actor holding a transformers causal LM (fp32). Concurrent
  ``generate`` requests with the same sampling parameters are batched into one
  ``model.generate`` call; per-token log-probs are those of the processed distribution
  (temperature, top-k, top-p applied), like vLLM's default ``logprobs_mode=processed_logprobs``.
- ``HFReplica``: the ``RolloutReplica`` that starts one server per replica (hybrid mode only:
  the actor's FSDP process and the server share the machine).
- ``HFServerAdapter``: the ``BaseRollout`` built inside the actor process
  (``workers/engine_workers.py``, ``ActorRolloutRefWorker.init_model``); on veRL's ``naive``
  weight sync (``ActorRolloutRefWorker.update_weights``) it streams the actor's full tensors to
  its server in buckets.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any, NamedTuple

import ray
import torch
from omegaconf import DictConfig
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, TokenOutput
from verl.workers.rollout.utils import ensure_async_iterator

from cl_trainer import private_api
from cl_trainer.verl_cpu import ROLLOUT_NAME, ROLLOUT_THREADS_ENV


def server_name(replica_rank: int) -> str:
    """The Ray actor name of a replica's server: how the adapter in the actor process finds it."""
    return f"{ROLLOUT_NAME}_server_{replica_rank}"


def rollout_world_size(config: RolloutConfig) -> int:
    return (
        config.tensor_model_parallel_size
        * config.data_parallel_size
        * config.pipeline_model_parallel_size
    )


class SamplingKey(NamedTuple):
    """The sampling parameters of one request; requests with equal keys share a batch."""

    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    logprobs: bool


def sampling_key(params: dict[str, Any], default_max_tokens: int) -> SamplingKey:
    """The veRL/vLLM sampling fields this server honours; anything else is rejected."""
    params = dict(params)
    max_tokens = params.pop("max_tokens", params.pop("max_new_tokens", default_max_tokens))
    key = SamplingKey(
        max_tokens=max(1, int(max_tokens)),
        temperature=float(params.pop("temperature", 1.0)),
        top_k=int(params.pop("top_k", -1)),
        top_p=float(params.pop("top_p", 1.0)),
        repetition_penalty=float(params.pop("repetition_penalty", 1.0)),
        logprobs=bool(params.pop("logprobs", False)),
    )
    if params:
        raise ValueError(
            f"{ROLLOUT_NAME} rollout does not support sampling params {sorted(params)}"
        )
    return key


class HFGenerationServer:
    """Token-in/token-out generation with transformers; ``HFReplica`` runs it as a Ray actor."""

    def __init__(
        self, config: RolloutConfig, model_config: HFModelConfig | DictConfig, replica_rank: int
    ):
        from transformers import AutoModelForCausalLM

        # RolloutReplica passes the model section as Hydra left it (a DictConfig).
        model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        threads = int(os.environ.get(ROLLOUT_THREADS_ENV, "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        self.config = config
        self.replica_rank = replica_rank
        self.model = AutoModelForCausalLM.from_pretrained(
            model_config.local_path,
            dtype=torch.float32,
            trust_remote_code=model_config.trust_remote_code,
        ).eval()
        tokenizer = model_config.tokenizer
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = sorted(eos_ids)
        pad = tokenizer.pad_token_id if tokenizer is not None else None
        self.pad_id = pad if pad is not None else self.eos_ids[0]
        self.global_steps: int | None = None
        self._pending: list[tuple[list[int], SamplingKey, asyncio.Future[Any]]] = []
        self._runner: asyncio.Task[None] | None = None
        self._model_lock = asyncio.Lock()
        self._loaded: set[str] = set()

    def _default_max_tokens(self, prompt_len: int) -> int:
        cfg = self.config
        return min(cfg.response_length, cfg.prompt_length + cfg.response_length - prompt_len)

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Any = None,
        video_data: Any = None,
        audio_data: Any = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        priority: int = 0,
    ) -> TokenOutput:
        if image_data is not None or video_data is not None or audio_data is not None:
            raise NotImplementedError(f"{ROLLOUT_NAME} rollout is text-only")
        prompt = [int(t) for t in prompt_ids]
        key = sampling_key(sampling_params, self._default_max_tokens(len(prompt)))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((prompt, key, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain())
        token_ids, log_probs = await future
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if key.logprobs else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    async def _drain(self) -> None:
        """Serve pending requests in batches of equal sampling params, until none are left."""
        # One scheduler turn lets the requests the agent loops fired together join the batch.
        await asyncio.sleep(0)
        while self._pending:
            taken = self._pending[: self.config.max_num_seqs]
            del self._pending[: len(taken)]
            groups: dict[SamplingKey, list[tuple[list[int], asyncio.Future[Any]]]] = {}
            for prompt, key, future in taken:
                groups.setdefault(key, []).append((prompt, future))
            for key, items in groups.items():
                try:
                    async with self._model_lock:
                        results = await asyncio.to_thread(
                            self._generate_batch, [p for p, _ in items], key
                        )
                except Exception as exc:
                    for _, future in items:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(items, results, strict=True):
                    if not future.done():
                        future.set_result(result)

    @torch.no_grad()
    def _generate_batch(
        self, prompts: list[list[int]], key: SamplingKey
    ) -> list[tuple[list[int], list[float]]]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        sampling: dict[str, Any] = (
            {
                "do_sample": True,
                "temperature": key.temperature,
                "top_k": max(key.top_k, 0),
                "top_p": key.top_p,
            }
            if key.temperature > 0
            else {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
        )
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=key.max_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            repetition_penalty=key.repetition_penalty,
            output_scores=True,
            return_dict_in_generate=True,
            **sampling,
        )
        new = out.sequences[:, width:]
        scores = torch.stack(out.scores, dim=1).float().log_softmax(dim=-1)
        chosen = scores.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        eos = torch.tensor(self.eos_ids)
        results = []
        for row, logp in zip(new.tolist(), chosen.tolist(), strict=True):
            end = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
            results.append((row[:end], logp[:end]))
        return results

    async def load_weights(self, tensors: dict[str, torch.Tensor], final: bool) -> None:
        """Copy one bucket of the actor's full tensors in; ``final`` checks every weight arrived."""
        async with self._model_lock:
            result = self.model.load_state_dict(tensors, strict=False)
            if result.unexpected_keys:
                raise KeyError(f"unknown weights from the actor: {result.unexpected_keys}")
            self._loaded.update(tensors)
            if final:
                state = self.model.state_dict()
                loaded = {state[k].data_ptr() for k in self._loaded}
                missing = [
                    k for k in state if k not in self._loaded and state[k].data_ptr() not in loaded
                ]
                self._loaded = set()
                if missing:
                    raise KeyError(f"weights not sent by the actor: {missing}")

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def wake_up(self, tags: list[str] | None = None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **_kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


class HFReplica(RolloutReplica):
    """One ``HFGenerationServer`` per replica, next to the hybrid actor/rollout worker."""

    async def launch_servers(self) -> None:
        if self.rollout_mode != RolloutMode.HYBRID:
            raise NotImplementedError(f"{ROLLOUT_NAME} rollout runs only in hybrid mode")
        server = (
            ray.remote(HFGenerationServer)
            .options(name=server_name(self.replica_rank), max_concurrency=self.max_concurrency)
            .remote(
                config=self.config, model_config=self.model_config, replica_rank=self.replica_rank
            )
        )
        await server.__ray_ready__.remote()
        private_api.set_replica_server(self, server, server_name(self.replica_rank))


async def _buckets(
    weights: Iterable[tuple[str, torch.Tensor]] | AsyncIterator[tuple[str, torch.Tensor]],
    bucket_bytes: int,
) -> AsyncIterator[dict[str, torch.Tensor]]:
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    async for name, tensor in ensure_async_iterator(weights):
        bucket[name] = tensor.detach().to("cpu")
        size += tensor.nbytes
        if size >= bucket_bytes:
            yield bucket
            bucket, size = {}, 0
    yield bucket


class HFServerAdapter(BaseRollout):
    """The rollout object inside the actor process: forwards weight updates to its server."""

    def __init__(
        self,
        config: RolloutConfig,
        model_config: HFModelConfig,
        device_mesh: Any,
        replica_rank: int = -1,
    ):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        world = rollout_world_size(self.config)
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.is_leader_rank = rank % world == 0
        self._server: Any = None

    def _server_handle(self) -> Any:
        if self._server is None:
            # The server starts after this adapter (LLMServerManager runs after init_model).
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None

    async def update_weights(
        self,
        weights: Any,
        wire_format: str = "named_tensors",
        *,
        peft_config: Any = None,
        base_sync_done: bool = True,
        global_steps: int | None = None,
    ) -> None:
        """Exactly the keywords veRL's worker passes (``private_api.update_weights_keywords``):
        a new one is a TypeError here, not silently dropped."""
        if wire_format != "named_tensors" or peft_config is not None or not base_sync_done:
            raise NotImplementedError(
                f"{ROLLOUT_NAME} rollout takes full named tensors (no delta sync, no LoRA adapters)"
            )
        bucket_bytes = self.config.checkpoint_engine.update_weights_bucket_megabytes << 20
        previous: dict[str, torch.Tensor] | None = None
        # Every rank drains the generator (FSDP gathers full tensors collectively); leaders send.
        async for bucket in _buckets(weights, bucket_bytes):
            if previous is not None and self.is_leader_rank:
                await self._server_handle().load_weights.remote(previous, final=False)
            previous = bucket
        if self.is_leader_rank:
            server = self._server_handle()
            await server.load_weights.remote(previous or {}, final=True)
            if global_steps is not None:
                await server.set_global_steps.remote(global_steps)
