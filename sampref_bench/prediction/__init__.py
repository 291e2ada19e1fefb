"""Prediction of new images with a fold ensemble of finished runs (``sampref_predict``).

:mod:`.inputs` finds and checks the input cases (nnU-Net's ``{case}_{XXXX}{ending}`` channel files) and the output
folder; :mod:`.ensemble` loads the fold runs, preprocesses each case as the plan preprocesses training images,
averages the folds' probabilities and writes each mask in its input's geometry and format.
"""
