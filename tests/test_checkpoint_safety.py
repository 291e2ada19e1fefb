"""Checkpoints that pickle Python objects load without running them (sampref_bench.models.checkpoints).

SAM-Med2D's train.py saves ``{"model": state_dict, "optimizer": <torch.optim.Adam>}``; such files are
read with every non-tensor global replaced by an inert stub, and refused when the weights
themselves would need one. All files are built here; nothing is downloaded.
"""

from __future__ import annotations

import datetime
import os
import warnings

import pytest
import torch

from sampref_bench.models import build_sam, build_sam_architecture, read_state_dict
from sampref_bench.models.checkpoints import load_strict
from sampref_bench.utilities.errors import SamprefError

SMALL_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,)}

#: Calls of :func:`_record`; a pickle that reduces to it would append here if it were run.
CALLS: list[str] = []


def _record(note: str) -> str:
    CALLS.append(note)
    return note


class _ShellCommand:
    """Pickles as ``os.system(command)``: loading it unsafely would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _RecordsCall:
    """Pickles as a call of :func:`_record` in this module."""

    def __reduce__(self):
        return _record, ("unpickled",)


class _TensorSubclass(torch.Tensor):
    """Pickles through ``torch._tensor._rebuild_from_type_v2``, which the stubbing reader does not allowlist."""


def _adam_after_one_step(model: torch.nn.Module) -> torch.optim.Adam:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.manual_seed(1)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    assert all(len(optimizer.state[p]) == 3 for p in model.parameters())  # step, exp_avg, exp_avg_sq
    return optimizer


def _assert_same_weights(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


# ---------------------------------------------------------------------------- SAM-Med2D's release layout
def test_sam_med2d_checkpoint_with_adam_object_loads_without_running_it(tmp_path):
    model = build_sam_architecture("sam-med2d", arch_overrides=SMALL_VIT, seed=4)
    optimizer = _adam_after_one_step(model)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "sam-med2d_b.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer}, path)  # as SAM-Med2D's train.py does

    with pytest.warns(UserWarning, match=r"torch\.optim\.adam\.Adam.*inert stubs.*\['model'\]") as record:
        state = read_state_dict(path, flavour="sam-med2d")
    message = str(record[0].message)
    assert "collections.defaultdict" in message and str(path) in message
    _assert_same_weights(state, reference)
    assert all(type(v) is torch.Tensor and not v.requires_grad for v in state.values())

    fresh = build_sam_architecture("sam-med2d", arch_overrides=SMALL_VIT, seed=5)
    load_strict(fresh, state, flavour="sam-med2d", source=str(path))
    _assert_same_weights(fresh.state_dict(), reference)
    with pytest.warns(UserWarning, match="inert stubs"):
        built = build_sam("sam-med2d", checkpoint=path, arch_overrides=SMALL_VIT)
    _assert_same_weights(built.state_dict(), reference)


def test_python_objects_beside_the_weights_are_dropped(tmp_path):
    model = build_sam("tiny")
    path = tmp_path / "dated.pth"
    torch.save({"model": model.state_dict(), "saved": datetime.datetime(2024, 1, 1), "epoch": 3}, path)
    with pytest.warns(UserWarning, match=r"datetime\.datetime"):
        state = read_state_dict(path, flavour="tiny")
    _assert_same_weights(state, model.state_dict())


# ---------------------------------------------------------------------------- malicious pickles
def test_malicious_reduce_beside_the_weights_is_never_run(tmp_path):
    marker = tmp_path / "marker"
    model = build_sam("tiny")
    path = tmp_path / "trojan.pth"
    payload = {"model": model.state_dict(), "optimizer": _ShellCommand(f"touch {marker}"), "hook": _RecordsCall()}
    torch.save(payload, path)
    CALLS.clear()

    with pytest.warns(UserWarning, match=r"system") as record:
        state = read_state_dict(path, flavour="tiny")
    assert not marker.exists() and CALLS == []
    assert "_record" in str(record[0].message)
    _assert_same_weights(state, model.state_dict())
    fresh = build_sam("tiny", seed=3)
    load_strict(fresh, state, flavour="tiny", source=str(path))
    _assert_same_weights(fresh.state_dict(), model.state_dict())


def test_malicious_object_inside_the_weights_is_refused(tmp_path):
    marker = tmp_path / "marker"
    weights = dict(build_sam("tiny").state_dict())
    weights["image_encoder.hook"] = _ShellCommand(f"touch {marker}")
    path = tmp_path / "trojan_inside.pth"
    torch.save({"model": weights, "epoch": 3}, path)
    with pytest.raises(SamprefError) as info:
        read_state_dict(path, flavour="tiny")
    message = str(info.value)
    assert str(path) in message and "system" in message and "['model']['image_encoder.hook']" in message
    assert "torch.save(model.state_dict(), path)" in message
    assert "weights_only=False" not in message and "add_safe_globals" not in message  # never allowlist os.system
    assert not marker.exists()

    CALLS.clear()
    bare = tmp_path / "bare_trojan.pth"
    torch.save({**build_sam("tiny").state_dict(), "extra": _RecordsCall()}, bare)
    with pytest.raises(SamprefError, match=r"_record object among the weights.*\['extra'\].*add_safe_globals"):
        read_state_dict(bare, flavour="tiny")
    assert CALLS == []


def test_weights_that_need_a_stub_are_refused(tmp_path):
    weights = dict(build_sam("tiny").state_dict())
    weights["mask_decoder.odd"] = torch.zeros(3).as_subclass(_TensorSubclass)
    subclassed = tmp_path / "subclassed.pth"
    torch.save({"model": weights}, subclassed)
    with pytest.raises(SamprefError, match=r"subclassed\.pth.*_rebuild_from_type_v2.*cannot be recovered"):
        read_state_dict(subclassed, flavour="tiny")

    whole_module = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(3, 2), whole_module)
    with pytest.raises(SamprefError, match=r"module\.pth holds a pickled torch\.nn\.modules\.linear\.Linear object"):
        read_state_dict(whole_module)
    nested_module = tmp_path / "nested_module.pth"
    torch.save({"model": torch.nn.Linear(3, 2), "epoch": 1}, nested_module)
    with pytest.raises(SamprefError, match=r"Linear object at \['model'\] instead of a state dict") as info:
        read_state_dict(nested_module)
    assert "add_safe_globals" not in str(info.value)  # allowlisting a module would not yield a state dict


def test_legacy_format_with_python_objects_is_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "legacy.pth"
    torch.save({"model": model.state_dict(), "optimizer": _adam_after_one_step(model)}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(SamprefError, match=r"legacy\.pth .*torch\.optim\.adam\.Adam.*not a torch\.save zip archive"):
        read_state_dict(path)


# ---------------------------------------------------------------------------- plain files (regression)
def test_plain_weights_only_files_load_as_before(tmp_path):
    model = build_sam("tiny")
    bare, nested, parallel = tmp_path / "bare.pth", tmp_path / "nested.pth", tmp_path / "parallel.pth"
    torch.save(model.state_dict(), bare)
    torch.save({"state_dict": model.state_dict(), "epoch": 3, "optimizer": {"lr": 1e-4}}, nested)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, parallel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stubbing, no warning
        for path in (bare, nested, parallel):
            _assert_same_weights(read_state_dict(path, flavour="tiny"), model.state_dict())
    empty = tmp_path / "nothing.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(SamprefError, match="holds no model weights"):
        read_state_dict(empty)
