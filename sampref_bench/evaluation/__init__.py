"""Evaluation: per-case metrics (``metrics``), nnU-Net-layout summary.json (``summary``), folder scoring
(``evaluate_folder``), the cross-fold table with paired tests (``aggregate``) and its text, CSV, JSON and
plot outputs (``table_output``, ``plots``)."""
