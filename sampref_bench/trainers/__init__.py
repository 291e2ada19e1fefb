"""The trainers: the base trainer (:mod:`.base`), the registry that finds them by name (:mod:`.registry`), run
folders and identity (:mod:`.run_folder`, :mod:`.run_identity`), distributed training (:mod:`.distributed`), the
data layer (:mod:`.data`), and the families: supervised and prompt-sourced SAM, two-stage SAM (DPO, pseudo-label,
continued), and the U-Net with its semi-supervised variants. ``docs/architecture.md`` describes the framework."""
