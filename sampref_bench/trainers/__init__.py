"""The trainers. The framework lives at the top: the base trainer (:mod:`.base`) with its two bases, checkpoint
state (:mod:`.checkpointing`) and a finished run built for prediction (:mod:`.inference`); the plan snapshot
(:mod:`.plan_snapshot`) and per-epoch randomness (:mod:`.randomness`); the typed options (:mod:`.options`); the
registry that finds trainers by name (:mod:`.registry`); run folders and identity (:mod:`.run_folder`,
:mod:`.run_identity`); validation (:mod:`.validation`) and distributed training (:mod:`.distributed`).

Each family has its package: :mod:`.sam` (supervised SAM, its bounds, the prompt-sourced and self-prompting
trainers, the two-stage base and pseudo-labels), :mod:`.dpo` (preference optimization: trainers, losses,
annotators, candidates) and :mod:`.unet` (the U-Net, its data, the semi-supervised trainers and their parts).
The data layer they read is :mod:`sampref_bench.planners.data`. ``docs/architecture.md`` describes the framework.
"""

from sampref_bench.trainers import _moved

_moved.install()
