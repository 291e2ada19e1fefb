"""From fingerprint to ``plans.json``: every dataset-dependent choice, each with its reason.

Values sit at the top level (``plans["image_size"]``); the reason for each sits under
``plans["reasons"][key]``. Axes are numpy order (``(Z, Y, X)`` for volumes).

Training length is planned here and is the same at every annotation fraction, as nnU-Net fixes 250
iterations per epoch: ``batch_size`` (slices per step), ``epochs`` and ``iterations_per_epoch`` for stage 1,
``dpo_epochs`` and ``dpo_iterations_per_epoch`` for stage 2, ``unet_epochs`` and ``unet_iterations_per_epoch``
for the U-Net trainers (supervised and semi-supervised), whose architecture is planned as ``unet``. A budget
changes which cases a trainer sees, never how long it trains. ``fractions`` always holds
``dpo_labeled_fraction`` (the DPO trainers' stage-1 budget); ``dpo_fractions`` lists the planned fractions above
it, where a DPO trainer has cases to rate.

Only some keys change the preprocessed arrays; :func:`preprocessing_signature` returns exactly those, so
re-planning with other fractions, thresholds or training lengths keeps the preprocessed folder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sampref_bench import __version__
from sampref_bench.dataset_conversion.dataset_json import foreground_labels
from sampref_bench.prompts.settings import default_prompt_settings
from sampref_bench.utilities.errors import SamprefError

PLANS_NAME = "samprefPlans"
#: Version of the plan's content; part of its inputs hash, so a change re-plans old datasets.
#: 2: planned training length (epochs, iterations_per_epoch, dpo_*), batch size independent of the fractions,
#: dpo_labeled_fraction always planned, dpo_fractions. 3: hidden_label_min_content; 10 iterations per epoch.
#: 5: planned configurations (``configurations``: frozen, partial, LoRA and full encoder) and ``plans_format``.
PLANS_FORMAT = 5
#: The default configuration (``plans["configuration"]``): LiteMedSAM's frozen image encoder, embeddings cached.
CONFIGURATION = "2d"
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 1.0)
DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
DEFAULT_IMAGE_SIZE = 256
DEFAULT_DPO_LABELED_FRACTION = 0.1
#: Share of training slices of a volume dataset that are background slices.
BACKGROUND_SLICE_TARGET = 0.1
#: A spacing this many times the next largest makes an axis "the through-plane axis".
ANISOTROPY_RATIO = 1.1
#: A pixel is image content (not air or padding) when its normalized intensity (channel mean) exceeds this.
CONTENT_LEVEL = 0.05
#: A slice of a volume whose labels are hidden is used when at least this share of its pixels is content.
HIDDEN_LABEL_MIN_CONTENT = 0.05
#: Slices per training step, the same at every fraction.
BATCH_SIZE = 8
#: Stage-1 epochs, chosen on an inner split of full BUSI's fold 0 training cases at fraction 0.2 (the largest
#: fraction the paper compares; ``benchmarks/results/stage1_busi.md``): the shortest of 15, 30 and 45 whose per-epoch
#: inner Dice (3-epoch mean) is within 0.005 of the curve's best: 15 epochs 0.507, 30 0.529, 45 0.535 (best).
EPOCHS = 45
#: Stage-2 (DPO) epochs.
DPO_EPOCHS = 30
#: Batches per epoch, in both stages and at every fraction (nnU-Net fixes 250 per epoch). Chosen with
#: ``benchmarks/bench_schedule.py`` (results in ``benchmarks/results/bench_schedule.md``): on the bundled BUSI
#: subset at fraction 0.1, LiteMedSAM's decoder without prompts reaches its inner-validation plateau within 15
#: epochs of 10 iterations (150 steps), while 20 iterations overfit the 8 labeled images after ~140 steps
#: and 5 stop short of it.
ITERATIONS_PER_EPOCH = 10
#: Measured CPU seconds per image per training step of LiteMedSAM's mask decoder on 2 CPU cores
#: (image embeddings cached), used to state the CPU time a planned training length implies.
CPU_SECONDS_PER_IMAGE_STEP = 0.34
#: U-Net (supervised and semi-supervised baselines) epochs and batches per epoch: 50 x 50 = 2,500 SGD steps of
#: ``BATCH_SIZE`` labeled slices, a GPU run's length (SSL4MIS trains its 2D baselines for 30,000 iterations, nnU-Net
#: for 1000 x 250; both far beyond a CPU budget). A CPU benchmark may shorten it and must say so. Measured on one
#: H100 (bundled BUSI subset, fold 0, fraction 0.1, 8 labeled images): the U-Net's per-epoch pseudo Dice reaches its
#: plateau (0.45-0.49) by epoch 15-30 of 50, and 100 epochs gave no gain (final Dice 0.374 vs 0.369); a step takes
#: about 0.03 s (UNet) to 0.1 s (UAMT) there.
UNET_EPOCHS = 50
UNET_ITERATIONS_PER_EPOCH = 50
#: Feature widths of the U-Net levels, as SSL4MIS's 2D UNet (16, 32, 64, 128, 256); fewer levels for small images.
UNET_CHANNELS = (16, 32, 64, 128, 256)
#: The U-Net halves the image until its bottleneck would fall below this many pixels per side.
UNET_MIN_BOTTLENECK = 16
#: Residual units per U-Net block (MONAI UNet's ``num_res_units``).
UNET_RES_UNITS = 2
#: How much of SAM's image encoder trains, by configuration (see :func:`plan_configurations`).
ENCODER_MODES = {"2d": "frozen", "2d_partial": "partial", "2d_lora": "lora", "2d_full": "full"}
#: Last encoder stages (and the neck) the partial configuration trains; activations before them are cached.
PARTIAL_TRAINABLE_STAGES = 1
#: LoRA rank of the parameter-efficient configuration (SAMed's rank 4) and its scaling alpha.
LORA_RANK = 4
#: Augmented views per training image cached for the frozen and partial encoders (0: none; view 0 is the image).
AUGMENTED_VIEWS = 0
#: Per-epoch validation samples (a fixed seeded subset of the validation samples) of the cached-encoder configurations.
EPOCH_VAL_SAMPLES = 64
#: Per-epoch validation samples of a configuration whose encoder runs at every validation (LoRA, full).
ENCODER_EPOCH_VAL_SAMPLES = 16
#: Measured CPU seconds per image per training step on 2 CPU cores (LiteMedSAM, 256 px, batch 8, median of two
#: steps; ``benchmarks/results/bench_configurations.md``): the decoder on cached embeddings, the last TinyViT stage
#: and neck on cached activations, the whole encoder with LoRA, the whole encoder trained.
CPU_SECONDS_PER_IMAGE_STEP_BY_MODE = {"frozen": CPU_SECONDS_PER_IMAGE_STEP, "partial": 3.05, "lora": 4.39,
                                      "full": 9.73}
#: Keys added to plans.json after :data:`PLANS_FORMAT` 4 without changing its inputs hash (finished runs record
#: the hash and are reused by it): ``sampref_plan`` re-plans a plans.json that lacks one, under the same hash.
ADDED_PLAN_KEYS = ("unet_epochs", "unet_iterations_per_epoch", "unet")
#: Plan keys that change the preprocessed arrays (see :func:`preprocessing_signature`).
PREPROCESSING_KEYS = ("dimensionality", "labels", "slicing_axis", "normalization", "channels_to_rgb",
                      "storage_dtype", "image_size", "transform")


def fraction_key(fraction: float) -> str:
    """Canonical text of an annotation fraction, used as a JSON key and in run folder names ("0.1", "1.0")."""
    return str(round(float(fraction), 6))


def validate_fractions(fractions: list[float] | tuple[float, ...]) -> list[float]:
    """Sorted unique fractions, each in (0, 1]; otherwise a :class:`SamprefError`."""
    bad = [f for f in fractions if not 0.0 < float(f) <= 1.0]
    if bad or not fractions:
        raise SamprefError(f"annotation fractions must lie in (0, 1], got {list(fractions)}; "
                           "e.g. --fractions 0.1 0.5 1")
    return sorted({round(float(f), 6) for f in fractions})


def preprocessing_signature(plans: dict[str, Any]) -> dict[str, Any]:
    """The plan keys that change preprocessed arrays (:data:`PREPROCESSING_KEYS`), and nothing else.

    Fractions, thresholds, batch size, training lengths, ``background_slice_share`` and the ``dpo_*`` keys
    are left out: they change what a trainer does with the arrays, not the arrays. Keys a plan lacks
    (e.g. ``slicing_axis`` of a hand-written 2D plan) map to ``None``.
    """
    return {key: plans.get(key) for key in PREPROCESSING_KEYS}


def training_time_text(epochs: int, iterations_per_epoch: int, batch_size: int) -> str:
    """``"15 x 20 x 8 = 2400 decoder image steps, about 14 min on 2 CPU cores"`` for one training run."""
    steps = int(epochs) * int(iterations_per_epoch) * int(batch_size)
    minutes = steps * CPU_SECONDS_PER_IMAGE_STEP / 60.0
    return (f"{epochs} x {iterations_per_epoch} x {batch_size} = {steps} decoder image steps, about "
            f"{minutes:.0f} min on 2 CPU cores ({CPU_SECONDS_PER_IMAGE_STEP} s per image step of LiteMedSAM's "
            "mask decoder, embeddings cached)")


def plan_configurations(image_size: int, batch_size: int, epochs: int, iterations_per_epoch: int,
                        epoch_val_samples: int) -> dict[str, dict[str, Any]]:
    """The planned configurations, by name, each with its encoder mode, schedule, augmentation and reason.

    Every configuration has ``encoder`` (``frozen``, ``partial``, ``lora`` or ``full``), ``batch_size``, ``epochs``,
    ``iterations_per_epoch`` (stage 1; the same at every fraction), ``augmentation`` (``{"views": N}``: N augmented
    views per training image embedded once and cached, for the encoders whose output is cached; ``{"online":
    true}``: the U-Net's augmentation drawn per item at every step, for the encoders that run at every step),
    ``epoch_val_samples`` (per-epoch validation subset), ``cpu_seconds_per_image_step`` (measured, 2 CPU cores,
    LiteMedSAM) and ``reason``; ``partial`` adds ``trainable_stages``, ``lora`` adds ``lora_rank``.
    """
    steps = epochs * iterations_per_epoch * batch_size
    out: dict[str, dict[str, Any]] = {}
    for name, mode in ENCODER_MODES.items():
        seconds = CPU_SECONDS_PER_IMAGE_STEP_BY_MODE[mode]
        cached = mode in ("frozen", "partial")
        entry: dict[str, Any] = {
            "encoder": mode, "batch_size": batch_size, "epochs": epochs, "iterations_per_epoch": iterations_per_epoch,
            "augmentation": {"views": AUGMENTED_VIEWS} if cached else {"online": True},
            "epoch_val_samples": epoch_val_samples if cached else min(epoch_val_samples, ENCODER_EPOCH_VAL_SAMPLES),
            "cpu_seconds_per_image_step": seconds,
        }
        cost = (f"{steps} image steps at about {seconds} s each on 2 CPU cores (LiteMedSAM, {image_size} px): "
                f"about {steps * seconds / 3600:.1f} h per run")
        if mode == "frozen":
            why = ("the image encoder stays fixed and its embeddings are computed once per image and cached; only "
                   "the prompt encoder and mask decoder train. The CPU default")
        elif mode == "partial":
            entry["trainable_stages"] = PARTIAL_TRAINABLE_STAGES
            why = (f"the encoder's activations before its last {PARTIAL_TRAINABLE_STAGES} stage are computed once per "
                   "image (and view) and cached; that stage, the neck, the prompt encoder and the mask decoder train. "
                   "CPU-feasible encoder adaptation")
        elif mode == "lora":
            entry["lora_rank"] = LORA_RANK
            why = (f"rank-{LORA_RANK} LoRA updates in the image encoder's attention projections (SAMed, Zhang & Liu "
                   "2023) train with the prompt encoder and mask decoder; the encoder's own weights stay fixed, but "
                   "it runs forward and backward at every step. A GPU configuration")
        else:
            why = ("every component trains, as the paper's stage 1 does (SAM-Med2D at 256 px); the encoder runs "
                   "forward and backward at every step. A GPU configuration")
        aug = (f"{AUGMENTED_VIEWS} augmented view(s) per training image, each embedded once and cached"
               if cached and AUGMENTED_VIEWS else "no augmented views (the cached image only)" if cached else
               "the U-Net's spatial and intensity augmentation on image and mask, seeded per item")
        vit = ("" if mode in ("lora", "full") else "; ViT flavours (vit_b, vit_l, vit_h, medsam) run at "
               f"{image_size} px with interpolated position embeddings, sensible only when their encoder trains: use "
               "2d_lora or 2d_full for them")
        entry["reason"] = f"{why}; {aug}; {cost}{vit}"
        out[name] = entry
    return out


def configuration_names(plans: dict[str, Any]) -> list[str]:
    """The configurations a plan offers (:func:`plan_configurations`), in planned order."""
    return list(plans.get("configurations", {}))


def validate_thresholds(thresholds: list[float] | tuple[float, ...]) -> list[float]:
    """Thresholds must be strictly increasing and inside (0, 1)."""
    values = [float(t) for t in thresholds]
    if not values or any(not 0.0 < t < 1.0 for t in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise SamprefError(f"candidate thresholds must be strictly increasing and inside (0, 1), got {values}; "
                           "e.g. --thresholds 0.3 0.4 0.5 0.6")
    return values


def choose_slicing_axis(fingerprint: dict[str, Any]) -> tuple[int, str]:
    """Through-plane axis of a volume dataset (numpy order) and the reason."""
    spacings = np.median(np.array([c["spacing"] for c in fingerprint["cases"]]), axis=0)
    shapes = np.median(np.array([c["shape"] for c in fingerprint["cases"]]), axis=0)
    order = np.argsort(spacings)[::-1]
    coarsest, runner_up = spacings[order[0]], spacings[order[1]]
    if coarsest >= ANISOTROPY_RATIO * runner_up:
        axis = int(order[0])
        return axis, (f"median spacing {spacings.round(3).tolist()} mm (numpy axis order): axis {axis} has the "
                      f"lowest resolution ({coarsest:.3g} mm vs {runner_up:.3g} mm), so slices are taken across it")
    axis = int(np.argmin(shapes))
    return axis, (f"median spacing {spacings.round(3).tolist()} mm is isotropic within {ANISOTROPY_RATIO}x, so the "
                  f"axis with fewest voxels (median shape {shapes.astype(int).tolist()}) is sliced: axis {axis}")


def plan_unet(image_size: int, in_channels: int, out_channels: int) -> dict[str, Any]:
    """The 2D U-Net of the U-Net trainers for ``image_size`` px slices: MONAI ``UNet`` arguments and a reason.

    Returns ``{"spatial_dims": 2, "in_channels", "out_channels", "channels", "strides", "num_res_units",
    "reason"}``: stride-2 levels are added (widths from :data:`UNET_CHANNELS`, SSL4MIS's UNet) while the bottleneck
    keeps at least :data:`UNET_MIN_BOTTLENECK` px per side, at most four downsamplings as SSL4MIS's UNet.
    ``out_channels`` counts background (number of labels + 1, softmax).
    """
    depth = 0
    while (depth < len(UNET_CHANNELS) - 1 and image_size % 2 ** (depth + 1) == 0
           and image_size // 2 ** (depth + 1) >= UNET_MIN_BOTTLENECK):
        depth += 1
    depth = max(depth, 1)
    channels = list(UNET_CHANNELS[:depth + 1])
    bottleneck = image_size // 2 ** depth
    reason = (f"MONAI 2D UNet on {in_channels}-channel {image_size} px slices (the stored channels the SAM trainers "
              f"see), {out_channels} softmax outputs (background + {out_channels - 1} label(s)): widths {channels} "
              f"(SSL4MIS's UNet widths, first {depth + 1}), {depth} stride-2 downsamplings so the bottleneck is "
              f"{bottleneck} px (halving stops before it falls below {UNET_MIN_BOTTLENECK} px, at most 4 as in "
              f"SSL4MIS), {UNET_RES_UNITS} residual units per block (MONAI's residual UNet, instance norm, PReLU)")
    return {"spatial_dims": 2, "in_channels": int(in_channels), "out_channels": int(out_channels),
            "channels": channels, "strides": [2] * depth, "num_res_units": UNET_RES_UNITS, "reason": reason}


def _normalization(modality: str, fingerprint: dict[str, Any]) -> tuple[dict[str, Any], str]:
    if modality.upper() == "CT":
        pooled = fingerprint["foreground_intensity_per_channel"]
        clip = [[c["p0_5"], c["p99_5"]] for c in pooled]
        return ({"scheme": "ct_dataset_clip", "clip": clip},
                "CT intensities are calibrated (HU): clip every image to the 0.5/99.5 percentiles of foreground "
                f"voxels pooled over the dataset ({[[round(a, 2), round(b, 2)] for a, b in clip]}) and scale to [0, 1]")
    return ({"scheme": "per_image_percentile", "percentiles": [0.5, 99.5]},
            f"{modality or 'this modality'} intensities are not calibrated: each image is clipped to its own "
            "0.5/99.5 percentiles and scaled to [0, 1] (MedSAM-Lite was trained on min-max scaled inputs)")


def _channels_to_rgb(n_channels: int) -> tuple[list[int], str]:
    if n_channels == 1:
        return [0, 0, 0], "one channel repeated three times: SAM's image encoder expects RGB"
    if n_channels == 2:
        return [0, 1, 0], "two channels fill R and G; B repeats channel 0"
    mapping = [0, 1, 2]
    note = "" if n_channels == 3 else f"; channels 3..{n_channels - 1} are not used by SAM"
    return mapping, "the first three channels fill R, G, B" + note


def _storage_dtype(fingerprint: dict[str, Any]) -> tuple[str, str]:
    dtypes = {c["dtype"] for c in fingerprint["cases"]}
    if dtypes <= {"uint8"}:
        return "uint8", ("the source images are 8-bit: storing the [0, 1] scaled images as 8-bit keeps the "
                         "source precision")
    return "float16", f"source dtypes {sorted(dtypes)} exceed 8 bits: float16 keeps ~3 significant digits in [0, 1]"


def background_share(fingerprint: dict[str, Any], axis: int) -> tuple[float, str]:
    """Fraction of each volume's background slices that enter training, aiming at a 10% background share."""
    fg = sum(c["foreground_slices_per_axis"][axis] for c in fingerprint["cases"])
    total = sum(c["shape"][axis] for c in fingerprint["cases"])
    bg = total - fg
    if bg == 0:
        return 0.0, "every slice holds foreground"
    share = min(1.0, BACKGROUND_SLICE_TARGET / (1 - BACKGROUND_SLICE_TARGET) * fg / bg)
    return round(share, 4), (f"{fg} foreground and {bg} background slices along axis {axis}: all foreground slices "
                             f"and {share:.1%} of background slices (seeded per volume) train, so about "
                             f"{BACKGROUND_SLICE_TARGET:.0%} of training slices teach the model to predict nothing")


def make_plans(dataset_json: dict[str, Any], fingerprint: dict[str, Any], *, image_size: int = DEFAULT_IMAGE_SIZE,
               fractions: list[float] | tuple[float, ...] = DEFAULT_FRACTIONS,
               thresholds: list[float] | tuple[float, ...] = DEFAULT_THRESHOLDS,
               dpo_labeled_fraction: float = DEFAULT_DPO_LABELED_FRACTION) -> dict[str, Any]:
    """Build the plans dict (see module docstring)."""
    if image_size < 32 or image_size % 16:
        raise SamprefError(f"--image-size must be a multiple of 16 and at least 32, got {image_size}")
    requested = validate_fractions(fractions)
    thresholds = validate_thresholds(thresholds)
    if not 0.0 < dpo_labeled_fraction <= 1.0:
        raise SamprefError(f"--dpo-labeled-fraction must lie in (0, 1], got {dpo_labeled_fraction}")
    dpo_labeled_fraction = round(float(dpo_labeled_fraction), 6)
    fractions = validate_fractions([*requested, dpo_labeled_fraction])
    labels = foreground_labels(dataset_json)
    empty = [name for name in labels if all(c["labels"][name]["voxels"] == 0 for c in fingerprint["cases"])]
    if len(empty) == len(labels):
        raise SamprefError(f"every label of {fingerprint['dataset_name']} is empty in every case: there is nothing to "
                           "segment. Check the conversion (e.g. --label-map 255:1) and reconvert.")
    modality = dataset_json["channel_names"]["0"]
    reasons: dict[str, str] = {}
    plans: dict[str, Any] = {
        "plans_name": PLANS_NAME,
        "plans_format": PLANS_FORMAT,
        "configuration": CONFIGURATION,
        "dataset_name": fingerprint["dataset_name"],
        "sampref_version": __version__,
        "dimensionality": int(dataset_json["dimensionality"]),
        "modality": modality,
        "labels": dict(dataset_json["labels"]),
        "target_text": dict(dataset_json.get("target_text", {})),
    }
    if empty:
        plans["empty_labels"] = empty
        reasons["empty_labels"] = "these labels never occur; they are kept in the label map but never trained"
    if plans["dimensionality"] == 3:
        axis, reasons["slicing_axis"] = choose_slicing_axis(fingerprint)
        plans["slicing_axis"] = axis
        plans["background_slice_share"], reasons["background_slice_share"] = background_share(fingerprint, axis)
        plans["slice_to_volume"] = "slice k of a case is index k along slicing_axis; predictions are stacked back"
    else:
        plans["slicing_axis"] = None
        plans["background_slice_share"] = 1.0
        reasons["background_slice_share"] = "2D dataset: every image is one training slice"
    plans["hidden_label_min_content"] = HIDDEN_LABEL_MIN_CONTENT
    reasons["hidden_label_min_content"] = (
        "which slices of a case whose labels are hidden (rated, unlabeled, or without a label file) are used "
        "cannot depend on its labels: a slice is used when at least "
        f"{HIDDEN_LABEL_MIN_CONTENT:.0%} of its pixels have a normalized intensity above {CONTENT_LEVEL} (image "
        "content rather than air or padding); labeled cases use their foreground slices plus "
        "background_slice_share of the rest" + ("" if plans["dimensionality"] == 3 else "; a 2D image is one slice"))
    plans["normalization"], reasons["normalization"] = _normalization(modality, fingerprint)
    n_channels = len(dataset_json["channel_names"])
    plans["channels_to_rgb"], reasons["channels_to_rgb"] = _channels_to_rgb(n_channels)
    plans["storage_dtype"], reasons["storage_dtype"] = _storage_dtype(fingerprint)
    plans["image_size"] = int(image_size)
    reasons["image_size"] = (f"{image_size} px: LiteMedSAM's native input (64x64 embeddings); ViT SAMs run at it "
                             "with interpolated position embeddings, as SAM-Med2D does")
    plans["transform"] = {"resize": "longest_side", "pad": "bottom_right_zeros", "image_interpolation": "bilinear",
                          "label_interpolation": "nearest-exact",
                          "inverse": "crop the resized region, resize to the original size (labels nearest-exact, "
                                     "probabilities bilinear), restack slices along slicing_axis"}
    reasons["transform"] = ("SAM-style: the longest side is resized to image_size keeping the aspect ratio and the "
                            "rest padded, so objects are not distorted; nearest-exact label resizing makes the "
                            "inverse exact whenever a slice is enlarged. The padding reaches every image encoder "
                            "as 0 in its input space, as each flavour's own code pads: after the mean/std "
                            "normalization for SAM (vit_*) and SAM-Med2D, in [0, 1] for LiteMedSAM, MedSAM and "
                            "tiny. One transform serves every flavour (prompts, labels and the inverse share it); "
                            "this deviates from two flavours' own geometry: MedSAM's inference resizes straight to "
                            "1024 x 1024, and SAM-Med2D resizes straight to 256 x 256 (nearest-neighbour, aspect "
                            "ratio not kept; its data loaders instead pad images smaller than 256 on both sides, "
                            "centred, with 0 after normalization)")
    plans["batch_size"] = BATCH_SIZE
    reasons["batch_size"] = (f"{BATCH_SIZE} slices per step at every fraction: {BATCH_SIZE} slices at {image_size} px "
                             "keep CPU decoder steps short and fit a 16 GB GPU; the batch counts slices, not cases, "
                             "so a small budget revisits its slices more often instead of getting smaller batches")
    plans["epochs"] = EPOCHS
    stage1 = training_time_text(EPOCHS, ITERATIONS_PER_EPOCH, BATCH_SIZE)
    reasons["epochs"] = (f"{EPOCHS} epochs at every fraction, so that a run at the largest compared fraction (0.2) "
                         "still converges: chosen on an inner split of full BUSI's fold 0 training cases at 0.2 "
                         "(per-epoch inner Dice 0.507 after 15 epochs, 0.529 after 30, 0.535 after 45, the best; "
                         "benchmarks/results/stage1_busi.md); the lr halves every 10 epochs. One run is "
                         f"{stage1}; each configuration's entry states its own cost")
    plans["iterations_per_epoch"] = ITERATIONS_PER_EPOCH
    reasons["iterations_per_epoch"] = (f"{ITERATIONS_PER_EPOCH} batches per epoch at every fraction (nnU-Net fixes "
                                       "250): a budget changes which slices a trainer sees, never how long it "
                                       "trains. Measured on the bundled BUSI subset at fraction 0.1 "
                                       "(benchmarks/results/bench_schedule.md): a prompt-free LiteMedSAM decoder "
                                       "reaches its inner-validation plateau within 15 x 10 steps, 15 x 20 overfits "
                                       "8 labeled images, 15 x 5 stops short; the number of epochs was then chosen "
                                       f"for the largest compared fraction. One stage-1 run is {stage1}")
    plans["dpo_epochs"] = DPO_EPOCHS
    stage2 = training_time_text(DPO_EPOCHS, ITERATIONS_PER_EPOCH, BATCH_SIZE)
    reasons["dpo_epochs"] = (f"{DPO_EPOCHS} stage-2 (DPO) epochs by default, at every fraction: {stage2}; "
                             "SAMBaselineContinued, the control, reads the same keys, so it matches DPO step for step; "
                             "the frozen "
                             "reference model adds one forward pass per step")
    plans["dpo_iterations_per_epoch"] = ITERATIONS_PER_EPOCH
    reasons["dpo_iterations_per_epoch"] = (f"{ITERATIONS_PER_EPOCH} batches per stage-2 epoch, as in stage 1 and the "
                                           "same at every fraction")
    plans["unet_epochs"] = UNET_EPOCHS
    unet_steps = UNET_EPOCHS * UNET_ITERATIONS_PER_EPOCH
    reasons["unet_epochs"] = (f"{UNET_EPOCHS} U-Net epochs at every fraction: {UNET_EPOCHS} x "
                              f"{UNET_ITERATIONS_PER_EPOCH} = {unet_steps} SGD steps of {BATCH_SIZE} labeled slices "
                              "(semi-supervised trainers add unlabeled slices), a GPU run's length (minutes on one "
                              "H100); SSL4MIS trains its 2D baselines for 30,000 iterations and nnU-Net for 1000 x "
                              "250, far beyond a CPU budget. On the bundled BUSI subset at fraction 0.1 the U-Net's "
                              "pseudo Dice plateaus by epoch 15-30 and 100 epochs gained nothing. A CPU benchmark may "
                              "shorten it (--epochs, iterations_per_epoch) and must say so")
    plans["unet_iterations_per_epoch"] = UNET_ITERATIONS_PER_EPOCH
    reasons["unet_iterations_per_epoch"] = (f"{UNET_ITERATIONS_PER_EPOCH} batches per U-Net epoch at every fraction: "
                                            "a U-Net learns from scratch and needs more steps than SAM's pretrained "
                                            "decoder; the poly learning-rate decay steps once per epoch")
    plans["unet"] = plan_unet(int(image_size), n_channels, len(plans["labels"]))
    reasons["unet"] = plans["unet"]["reason"]
    plans["configurations"] = plan_configurations(int(image_size), BATCH_SIZE, EPOCHS, ITERATIONS_PER_EPOCH,
                                                  EPOCH_VAL_SAMPLES)
    reasons["configurations"] = (
        "how much of SAM's image encoder trains, one configuration per choice (sampref_train -c NAME; the run folder "
        "names it): " + "; ".join(f"{name} ({c['encoder']}, {c['cpu_seconds_per_image_step']} s per image step on "
                                  "2 CPU cores)" for name, c in plans["configurations"].items())
        + f". {CONFIGURATION} is the default: the only one a CPU user runs in minutes. Each entry states its reason")
    reasons["configuration"] = f"the default configuration, {CONFIGURATION}"
    plans["fractions"] = fractions
    reasons["fractions"] = "fraction f labels the first ceil(f*n) cases of each fold's permutation (nested budgets)"
    if dpo_labeled_fraction not in requested:
        reasons["fractions"] += (f"; {fraction_key(dpo_labeled_fraction)} (dpo_labeled_fraction) was added to the "
                                 f"requested {[fraction_key(f) for f in requested]}: it is the stage-1 budget of "
                                 "every DPO trainer, so its reference run must be plannable")
    plans["thresholds"] = thresholds
    reasons["thresholds"] = "probability thresholds that turn a prediction into DPO preference candidates"
    plans["dpo_labeled_fraction"] = dpo_labeled_fraction
    reasons["dpo_labeled_fraction"] = ("a DPO trainer at fraction f buys pixel labels for this first share of the "
                                       "permutation and ratings for the rest of the fraction-f cases; it is always "
                                       "among the planned fractions and buys at least one case per fold")
    plans["dpo_fractions"] = [f for f in fractions if f > dpo_labeled_fraction]
    reasons["dpo_fractions"] = (f"the planned fractions above dpo_labeled_fraction {fraction_key(dpo_labeled_fraction)}"
                                ": only there does a DPO trainer have cases to rate (at or below it every budgeted "
                                "case is pixel-labeled and stage 2 has nothing to learn from)")
    plans["prompts"], reasons["prompts"] = default_prompt_settings(modality)
    plans["reasons"] = reasons
    return plans
