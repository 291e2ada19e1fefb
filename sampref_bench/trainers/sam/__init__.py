"""SAM trainers: the supervised trainer (:mod:`.trainer`), its bounds with ground-truth or no prompts
(:mod:`.bounds`), the trainers whose prompts come from the prompt cache (:mod:`.prompted`), the one whose
prompts come from a coarse-mask head it learns (:mod:`.self_prompt`), the two-stage base
with its continued control (:mod:`.two_stage`) and SAM self-training on pseudo-labels (:mod:`.pseudo_label`)."""
