"""veRL plugin: the reference policy's weights from ``$CL_TRAINER_REFERENCE_MODEL``
(``--reference base``; ``cl_trainer.reference`` sets both variables that bring it here).

veRL 0.9.1's ``ActorRolloutRefWorker.init_model`` (``workers/engine_workers.py``) builds the
reference from a copy of the actor's model config, so it always starts from the actor's
``model.path``; the legacy worker's ``actor_rollout_ref.ref.model.path`` is gone, and the key is
refused by the reference's config class (``FSDPActorConfig``). The worker constructs the
reference through its class attribute ``ref_worker_cls`` (``TrainingWorker``); this module,
imported by every veRL process through ``VERL_USE_EXTERNAL_MODULES``, sets it to
:class:`ReferenceFromModel`, which points the copied config's ``local_path`` (the directory the
FSDP engine loads weights from) at the named model before veRL's own ``TrainingWorker`` builds it.
The architecture and tokenizer stay the actor's: the base model and every stage's model share them.
"""

from __future__ import annotations

import os
from typing import Any

from verl.utils.fs import copy_to_local
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

from cl_trainer.reference import REFERENCE_MODEL_ENV


class ReferenceFromModel(TrainingWorker):
    """veRL's reference worker, its weights loaded from ``$CL_TRAINER_REFERENCE_MODEL``."""

    def __init__(self, config: Any) -> None:
        path = os.environ.get(REFERENCE_MODEL_ENV)
        if path:
            config.model_config.local_path = copy_to_local(path)
            print(f"cl-trainer: reference policy from {path}", flush=True)
        super().__init__(config=config)


def install() -> bool:
    """Make veRL's hybrid worker build its reference as :class:`ReferenceFromModel`."""
    if ActorRolloutRefWorker.ref_worker_cls is not TrainingWorker:
        return ActorRolloutRefWorker.ref_worker_cls is ReferenceFromModel
    ActorRolloutRefWorker.ref_worker_cls = ReferenceFromModel
    return True


INSTALLED = install()
