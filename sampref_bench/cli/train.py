"""``sampref_train``: train one trainer on one fold at one annotation fraction, then validate it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from sampref_bench.cli.common import run_cli

EPILOG = """\
examples:
  sampref_train 003 SAMBoxOracle 0 --fraction 0.2
  sampref_train 003 SAMNoPrompt 0 --fraction 0.2 --epochs 5 --device cuda
  sampref_train 003 SAMBoxOracle 0 --fraction 0.2 --continue          # resume after a crash
  sampref_train 003 MyTrainer 0 --trainer-module my_trainers.py       # your own subclass
  sampref_train 003 SAMBoxOracle 0 --set lr=3e-4 --set model=tiny     # any hyperparameter
  sampref_train 003 SAMNoPrompt 0 --set lr=3e-4 --run-name fastlr      # name the run yourself
  sampref_train --list-options DPORanking                             # every --set key, its type and range
  sampref_train 003 SAMBaseline 0 --fraction 0.1                      # learned box and point + VQA and LLM text
  sampref_train 003 SAMBaseline 0 --fraction 0.1 --set box_source=saliency  # the unsupervised saliency box instead
  sampref_train 003 SAMBaseline 0 --set saliency=biomedclip --set clip_path=/weights/BiomedCLIP
  sampref_train 003 SAMSelfPrompt 0 --fraction 0.1                    # the same learned box and point, no text
  sampref_train 003 DPORanking 0 --fraction 0.2                       # stage 1 (SAMBaseline@0.1) reused, then DPO
  sampref_train 003 DPORanking 0 --fraction 0.2 --set settings=paper  # the paper's DPO settings
  sampref_train 003 DPORating 0 --fraction 0.2 --set annotator=file --set ratings_file=ratings.json
  sampref_train 003 DPORanking 0 --fraction 0.2 --set rating_noise=0.3 --set candidates=jitter
  sampref_train 003 UNet 0 --fraction 0.1 --device cuda --set num_workers=8  # supervised U-Net (MONAI)
  sampref_train 003 MeanTeacher 0 --fraction 0.1                      # + every unlabeled training image
  sampref_train 003 SAMPseudoLabel 0 --fraction 0.1                   # SAMBaseline self-training
  sampref_train 003 UNet 0 --fraction 0.2 --device cuda --num-gpus 2  # one run on 2 GPUs (DDP, torchrun)

The run goes to $SAMPREF_results/DatasetXXX_Name/{Trainer}__{plans}__{configuration}__f{fraction}/fold_{k}/
with checkpoint_latest.pth (every epoch), checkpoint_final.pth, config.json, training_log.csv,
progress.png and validation/summary.json. `sampref_train --list` shows every trainer.

Training length is planned (plans.json: epochs, iterations_per_epoch, batch_size in slices) and the same
at every fraction. A run whose hyperparameters differ from the trainer's defaults (--set, --epochs,
--seed) gets its own folder: the configuration part carries a tag of the differing values (e.g.
2d-lr0.0003) or the --run-name you give, so differently configured runs never share a folder or a table
row. --continue refuses a checkpoint trained with other hyperparameters and names the differing keys.
Prompt-sourced trainers (SAMBaseline, SAMNoVQA, SAMBoxOnly, SAMTextOnly) take their prompt settings from
plans.json (prompts) unless --set overrides them (saliency, points, vqa, llm_model, text_encoder, clip_path,
medvint_path); config.json records the saliency source.
DPO trainers (DPORanking, DPORating, DPOBestOnly) spend fraction f as dpo_labeled_fraction (0.1) pixel labels
plus ratings of the reference model's candidate masks on the rest; stage 1 is the SAMBaseline run on the
labeled part (reused when finished, else trained first), stage 2 trains the mask decoder for the plan's
dpo_epochs. Options: candidates (thresholds, adaptive, jitter, multimask, dropout), annotator (simulated,
file + ratings_file; sampref_candidates writes a template), rating_noise, loss (dpo, ipo), reduction (sum,
mean, disagreement_mean), anchor_weight, kl_weight, b1, b2, beta, dpo_lr, selection (last, inner),
settings (sampref, paper). SAMBaselineContinued --fraction 0.1 is their control (the same extra steps on
the labels alone).
U-Net trainers (UNet, and the semi-supervised MeanTeacher, UAMT, CPS, FixMatch) train the plan's MONAI U-Net
(plans.json: unet) from scratch for unet_epochs x unet_iterations_per_epoch batches, with MONAI augmentation
streamed by num_workers loader processes (a run-time setting: the weights do not depend on it). The
semi-supervised ones and SAMPseudoLabel also read every training case of the fold without a label at this
fraction, and the raw dataset's imagesTrUnlabeled/ images (--set use_unlabeled_images=false to leave those
out); config.json records the pixel labels, ratings and unlabeled images each run used.
--num-gpus N (N > 1) runs one training as N processes with DistributedDataParallel, started through torchrun
(or joins the group when started by torchrun itself): the global batch stays the planned batch, each process
trains on its contiguous 1/N of it (every process loads the whole batch), gradients and logged losses are
averaged over processes, and only rank 0 writes the run folder. --device cuda puts process k on GPU k (nccl);
--device cpu runs N CPU processes (gloo). Trainers that support it: UNet (others refuse with an error).
Validation and prediction read images only; an oracle trainer (SAMBoxOracle: ground-truth boxes) says
so in config.json and is marked in every table.
"""


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--set wants KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = _value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sampref_train``."""
    parser = argparse.ArgumentParser(prog="sampref_train", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", help="3, 003 or Dataset003_BUSI")
    parser.add_argument("trainer", nargs="?", help="trainer class name, e.g. SAMBoxOracle")
    parser.add_argument("fold", nargs="?", type=int, help="fold index, 0..4")
    parser.add_argument("--fraction", type=float, default=1.0, help="annotation fraction (planned; default 1.0)")
    parser.add_argument("-c", "--configuration", default="2d",
                        help="planned configuration: 2d (frozen image encoder, the default), 2d_partial, 2d_lora, "
                             "2d_full (plans.json states each one's reason and CPU cost; old *-unfrozen names are "
                             "2d_full)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    parser.add_argument("--epochs", type=int, default=None, help="override the planned number of epochs")
    parser.add_argument("--seed", type=int, default=None, help="override the seed (default 12345)")
    parser.add_argument("--continue", dest="continue_training", action="store_true",
                        help="resume from checkpoint_latest.pth (or redo validation of a finished run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any hyperparameter, value parsed as JSON (e.g. lr=3e-4, model=vit_b); each is checked "
                             "against its type and range before anything is created (--list-options TRAINER)")
    parser.add_argument("--run-name", default=None, metavar="NAME",
                        help="name of this run's folder tag instead of one made from the non-default settings")
    parser.add_argument("--trainer-module", action="append", default=[],
                        help="import this module or .py file first so its trainers register")
    parser.add_argument("--num-gpus", type=int, default=None, metavar="N",
                        help="train as N processes with DistributedDataParallel through torchrun (GPUs with "
                             "--device cuda, CPU processes with --device cpu); default 1, or as many as torchrun "
                             "started")
    parser.add_argument("--list", action="store_true", help="list the available trainers and exit")
    parser.add_argument("--list-options", metavar="TRAINER", default=None,
                        help="list TRAINER's options (--set keys) with their defaults, types and ranges, and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sampref_train``."""
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        from sampref_bench.trainers import distributed
        from sampref_bench.trainers.registry import available_trainers, import_trainer_module

        for module in args.trainer_module:
            import_trainer_module(module)
        if args.list:
            print("\n".join(available_trainers()))
            return 0
        if args.list_options:
            from sampref_bench.trainers.options import describe_options
            from sampref_bench.trainers.registry import get_trainer

            print(describe_options(get_trainer(args.list_options)))
            return 0
        if args.dataset is None or args.trainer is None or args.fold is None:
            parser.error("DATASET TRAINER FOLD are required (or --list)")
        if args.num_gpus is not None and args.num_gpus < 1:
            parser.error(f"--num-gpus must be >= 1, got {args.num_gpus}")
        if distributed.launched_by_torchrun():  # one of torchrun's processes: join the group
            distributed.init_from_env(args.device, args.num_gpus)
            try:
                return train(distributed.is_main())
            finally:
                distributed.teardown()
        if args.num_gpus is not None and args.num_gpus > 1:
            return launch(args.num_gpus)
        return train(True)

    def launch(processes: int) -> int:
        """Check what can be checked here, then run this very command as ``processes`` torchrun processes (they
        find torchrun's environment and join the group); torchrun's exit status."""
        from sampref_bench.trainers import distributed
        from sampref_bench.trainers.registry import get_trainer
        from sampref_bench.utilities.errors import SamprefError

        get_trainer(args.trainer).check_distributed(processes)
        if args.device == "cuda":
            import torch

            if torch.cuda.device_count() < processes:
                raise SamprefError(f"--num-gpus {processes} --device cuda, but {torch.cuda.device_count()} CUDA GPU(s) "
                                   "are visible")
        command = distributed.torchrun_command(processes, list(sys.argv[1:] if argv is None else argv))
        return subprocess.call(command)

    def train(report: bool) -> int:
        """Build the trainer and run it under the run folder's lock, the one ``sampref_benchmark`` takes (rank 0 or
        the only process takes it), so that a second identical command, or a grid training the same run, is
        refused at once; ``report``: print the run folder and its Dice (rank 0)."""
        from sampref_bench import paths
        from sampref_bench.grid.locks import lock_holder, lock_path, resolve_lock_policy
        from sampref_bench.trainers import distributed
        from sampref_bench.trainers.registry import get_trainer
        from sampref_bench.utilities.errors import SamprefError

        overrides = _overrides(args.overrides)
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        if args.seed is not None:
            overrides["seed"] = args.seed
        cls = get_trainer(args.trainer)
        trainer = cls(args.dataset, args.fold, args.fraction, configuration=args.configuration, device=args.device,
                      overrides=overrides, progress=not args.no_progress, run_name=args.run_name)
        folder = trainer.output_dir
        lock = None
        if distributed.is_main():  # the grid's lock kind for this results folder (--lock-mode auto)
            lock = resolve_lock_policy("auto", paths.results_root() / trainer.dataset_name).lock(folder)
            if not lock.acquire():
                holder = getattr(lock, "refusal", "") or lock_holder(folder) or "another process"
                raise SamprefError(f"{folder} is being trained by another command: its run lock {lock_path(folder)} "
                                   f"is held by {holder}, a sampref_train or sampref_benchmark of the same run. "
                                   "Nothing was started. Wait for it to finish (then --continue resumes it if it "
                                   "stopped early) or stop that process, and rerun.")
            if getattr(lock, "recovered", ""):
                print(f"sampref_train: took over the stale lock {lock_path(folder)} of {lock.recovered}",
                      file=sys.stderr)
        try:
            out = trainer.run_training(continue_training=args.continue_training)
        finally:
            if lock is not None:
                lock.release()
        if lock is not None and getattr(lock, "lost", False):
            print(f"sampref_train: warning: the lock file {lock_path(folder)} was taken over by another command while "
                  "this run trained (its heartbeat looked stale); check the run", file=sys.stderr)
        if not report:
            return 0
        summary = json.loads((out / "validation" / "summary.json").read_text())
        print(f"{out}\n  validation foreground mean Dice: {summary['foreground_mean'].get('Dice', float('nan')):.4f}")
        return 0

    return run_cli(body, "sampref_train")


if __name__ == "__main__":
    sys.exit(main())
