"""Evaluation: per-case metrics (``metrics``), nnU-Net-layout summary.json (``summary``) and folder scoring
(``evaluate_folder``); cross-fold tables, plots and statistics come in later issues."""
