import math

import pytest

from sampref_bench.planners.splits import add_budgets, kfold_splits, validate_user_splits
from sampref_bench.utilities.errors import SamprefError

CASES = [f"c{i:02d}" for i in range(20)]


def test_golden_split_is_machine_independent():
    # KFold(shuffle=True, random_state=12345) and numpy's PCG64 permutation are stable across platforms;
    # this pins the values computed when the planner was written.
    folds = add_budgets(kfold_splits(CASES), [0.1, 0.5, 1.0], 0.1)
    assert folds[0]["val"] == ["c03", "c08", "c13", "c16"]
    assert folds[0]["permutation"][:5] == ["c12", "c14", "c15", "c07", "c05"]


def test_folds_partition_cases_and_repeat():
    folds = kfold_splits(CASES)
    assert len(folds) == 5
    vals = [c for f in folds for c in f["val"]]
    assert sorted(vals) == CASES
    for fold in folds:
        assert not set(fold["train"]) & set(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == CASES
    assert kfold_splits(list(reversed(CASES))) == folds


@pytest.mark.parametrize("fractions", [[0.1, 0.2, 0.3, 0.4, 0.5, 1.0], [0.25, 0.75]])
def test_budgets_are_nested_and_sized(fractions):
    for fold in add_budgets(kfold_splits(CASES), fractions, 0.1):
        n = len(fold["train"])
        assert sorted(fold["permutation"]) == fold["train"]
        previous: list[str] = []
        for key, labeled in fold["labeled"].items():
            assert len(labeled) == math.ceil(float(key) * n)
            assert labeled[: len(previous)] == previous
            assert labeled == fold["permutation"][: len(labeled)]
            previous = labeled
        assert fold["dpo_labeled"] == fold["permutation"][:2]


def test_groups_never_straddle():
    groups = {c: f"p{i // 3}" for i, c in enumerate(CASES)}
    folds = kfold_splits(CASES, groups)
    for fold in folds:
        train_groups = {groups[c] for c in fold["train"]}
        assert not train_groups & {groups[c] for c in fold["val"]}
    validate_user_splits(folds, CASES, groups, "x")


def test_fraction_below_one_case():
    with pytest.raises(SamprefError, match="less than one case"):
        add_budgets(kfold_splits(CASES), [0.05], 0.1)


def test_too_few_cases():
    with pytest.raises(SamprefError, match="at least 5"):
        kfold_splits(CASES[:4])


@pytest.mark.parametrize("folds,match", [
    ([{"train": ["c00", "zz"], "val": ["c01"]}], "unknown case"),
    ([{"train": ["c00", "c01"], "val": ["c01"]}], "both train and val"),
    ([{"train": ["c00"], "val": []}], "empty"),
    ({"train": []}, "list of folds"),
])
def test_bad_user_splits(folds, match):
    with pytest.raises(SamprefError, match=match):
        validate_user_splits(folds, CASES, None, "splits_final.json")


def test_user_splits_straddling_group():
    groups = {"c00": "p", "c01": "p"}
    with pytest.raises(SamprefError, match="both sides"):
        validate_user_splits([{"train": ["c00"], "val": ["c01"]}], CASES, groups, "s.json")


def test_fold_keys_in_nnunet_order():
    for fold in add_budgets(kfold_splits(CASES), [0.5, 1.0], 0.1):
        assert list(fold) == ["train", "val", "permutation", "labeled", "dpo_labeled"]


def test_dpo_labeled_fraction_buys_at_least_one_case():
    # 5 cases: 4 training cases per fold, so 0.1 buys 0.4 of a case; as the DPO stage-1 budget it buys one.
    folds = add_budgets(kfold_splits(CASES[:5]), [0.1, 0.5, 1.0], 0.1)
    for fold in folds:
        assert fold["labeled"]["0.1"] == fold["dpo_labeled"] == fold["permutation"][:1]
        assert fold["labeled"]["0.5"] == fold["permutation"][:2]
    with pytest.raises(SamprefError, match="fraction 0.2 .* less than one case"):
        add_budgets(kfold_splits(CASES[:5]), [0.1, 0.2, 1.0], 0.1)
