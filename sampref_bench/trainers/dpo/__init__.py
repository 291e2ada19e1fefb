"""Preference optimization of SAM's mask decoder: the DPO trainers (:mod:`.trainers`), the preference weights and
losses (:mod:`.losses`), simulated and file annotators (:mod:`.annotators`) and the reference model's candidate
masks with the adaptive thresholds (:mod:`.candidates`)."""
