"""Unsupervised prompt sources, per (case, slice, label) and never reading a label: saliency maps
(:mod:`.saliency`; BiomedCLIP with gScoreCAM in :mod:`.biomedclip` and :mod:`.gscorecam`) refined by a dense CRF
into boxes and points (:mod:`.regions`), VQA text (:mod:`.vqa`), LLM text (:mod:`.llm_text`), the text encoders
(:mod:`.text_encoder`), their settings (:mod:`.settings`) and the cache that keeps them beside the data
(:mod:`.store`). With several labels a run picks each label's own saliency component by a location prior learned from
its labeled cases (:mod:`.label_prior`); that choice is made at run time and never cached."""
