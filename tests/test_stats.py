"""GateStats against counts worked out by hand on a small case, and its error messages."""

from __future__ import annotations

import builtins
import copy
import math
from dataclasses import dataclass

import pytest
import torch

import gatekit.plots
import gatekit.stats
from gatekit import GatekitError, GateStats


@dataclass(frozen=True)
class Site:
    name: str
    offset: int
    num_gates: int


SITES = (Site("layer1.conv", 0, 2), Site("layer2.conv", 2, 3))

# 5 samples x 5 gates, labels below.  Worked out by hand:
#   gate 0: open for all 5          -> always on
#   gate 1: open for none           -> always off
#   gate 2: open for samples 0,1    -> 2/5, input-dependent
#   gate 3: open for 0,1,2,3        -> 4/5, input-dependent
#   gate 4: open for sample 4 only  -> 1/5, input-dependent
#   per-sample open counts: [3, 3, 2, 2, 2]
#   distinct patterns: rows 0,1 are equal, rows 2,3 are equal, row 4 differs -> 3
#   layer1 (gates 0-1): open fraction (5 + 0) / 10 = 0.5, 1 on, 1 off, 0 input-dependent
#   layer2 (gates 2-4): open fraction (2 + 4 + 1) / 15 = 7/15, 0 on, 0 off, 3 input-dependent
GATES = torch.tensor(
    [
        [1.0, 0.0, 1.0, 1.0, 0.0],
        [1.0, 0.0, 1.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0, 1.0],
    ]
)
LABELS = torch.tensor([0, 0, 1, 1, 2])
# class 0 = rows 0,1; class 1 = rows 2,3; class 2 = row 4
CLASS_FRACTION = [
    [1.0, 0.0, 1.0, 1.0, 0.0],
    [1.0, 0.0, 0.0, 1.0, 0.0],
    [1.0, 0.0, 0.0, 0.0, 1.0],
]


def _filled(batch_split: int = 2, **kwargs: object) -> GateStats:
    stats = GateStats(SITES, num_classes=3, **kwargs)
    stats.update(GATES[:batch_split], LABELS[:batch_split])
    stats.update(GATES[batch_split:], LABELS[batch_split:])
    return stats


@pytest.mark.parametrize("split", [1, 2, 4])
def test_counts_match_hand_computed(split: int) -> None:
    stats = _filled(split)
    assert stats.num_samples == 5
    assert stats.open_fraction.tolist() == [1.0, 0.0, 0.4, 0.8, 0.2]
    assert stats.per_sample_open.tolist() == [3, 3, 2, 2, 2]
    assert stats.always_on_mask.tolist() == [True, False, False, False, False]
    assert stats.always_off_mask.tolist() == [False, True, False, False, False]
    assert (stats.always_on_count, stats.always_off_count, stats.input_dependent_count) == (1, 1, 3)
    assert stats.num_patterns == 3
    assert stats.class_open_fraction.tolist() == CLASS_FRACTION
    assert stats.class_counts.tolist() == [2, 2, 1]


def test_layers_follow_sites() -> None:
    layers = _filled().layers()
    assert [layer.name for layer in layers] == ["layer1.conv", "layer2.conv"]
    assert [layer.num_gates for layer in layers] == [2, 3]
    assert layers[0].open_fraction == pytest.approx(0.5)
    assert layers[1].open_fraction == pytest.approx(7 / 15)
    assert (layers[0].always_on, layers[0].always_off, layers[0].input_dependent) == (1, 1, 0)
    assert (layers[1].always_on, layers[1].always_off, layers[1].input_dependent) == (0, 0, 3)


def test_thresholds_are_parameters() -> None:
    # "nearly always": on at >= 0.8, off at <= 0.2 -> gates 0,3 on; 1,4 off; 2 input-dependent.
    stats = _filled(always_on=0.8, always_off=0.2)
    assert stats.always_on_mask.tolist() == [True, False, False, True, False]
    assert stats.always_off_mask.tolist() == [False, True, False, False, True]
    assert stats.input_dependent_count == 1
    # open_threshold binarises soft gates: 0.6 is open at 0.5 and closed at 0.7.
    soft = torch.tensor([[0.6, 0.2]])
    s1, s2 = GateStats(open_threshold=0.5), GateStats(open_threshold=0.7)
    s1.update(soft)
    s2.update(soft)
    assert s1.per_sample_open.tolist() == [1]
    assert s2.per_sample_open.tolist() == [0]


def test_summary_and_table() -> None:
    stats = _filled()
    summary = stats.summary()
    assert summary["per_sample_open"] == {"min": 2, "mean": pytest.approx(12 / 5), "max": 3}
    assert (summary["always_on"], summary["always_off"], summary["input_dependent"]) == (1, 1, 3)
    assert summary["distinct_patterns"] == 3
    assert summary["open_fraction"] == pytest.approx(12 / 25)
    table = stats.table()
    lines = table.splitlines()
    assert lines[1].split() == ["layer1.conv", "2", "0.50", "1", "1", "0"]
    assert lines[2].split() == ["layer2.conv", "3", "0.47", "0", "0", "3"]
    assert lines[4].split() == ["total", "5", "0.48", "1", "1", "3"]
    assert "min 2, mean 2.4, max 3 of 5" in table


def test_merge_equals_single_pass() -> None:
    a = GateStats(SITES, num_classes=3)
    b = GateStats(SITES)  # class table grown from labels, then merged into a's
    a.update(GATES[:3], LABELS[:3])
    b.update(GATES[3:], LABELS[3:])
    a.merge(b)
    whole = _filled()
    assert a.summary() == whole.summary()


def test_classes_grow_without_num_classes() -> None:
    stats = GateStats()
    stats.update(GATES[:2], LABELS[:2])
    stats.update(GATES[2:], LABELS[2:])
    assert stats.class_open_fraction.tolist() == CLASS_FRACTION


def test_class_without_samples_is_nan() -> None:
    stats = GateStats(num_classes=2)
    stats.update(GATES[:1], torch.tensor([0]))
    assert all(math.isnan(v) for v in stats.class_open_fraction[1].tolist())


def test_bad_input_messages() -> None:
    with pytest.raises(GatekitError, match=r"shape \(N, num_gates\)"):
        GateStats().update(torch.ones(5))
    stats = GateStats(SITES)
    with pytest.raises(GatekitError, match="got 4 gates per sample, expected 5"):
        stats.update(torch.ones(2, 4))
    with pytest.raises(GatekitError, match="label 3 but num_classes=3"):
        GateStats(SITES, num_classes=3).update(GATES, torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(GatekitError, match="2 labels for 5 samples"):
        GateStats(SITES).update(GATES, torch.tensor([0, 1]))
    with pytest.raises(GatekitError, match="no samples"):
        GateStats().summary()
    with pytest.raises(GatekitError, match="num_gates=4 but the sites hold 5"):
        GateStats(SITES, num_gates=4)
    with pytest.raises(GatekitError, match="always_off < always_on"):
        GateStats(always_on=0.3, always_off=0.5)
    with pytest.raises(GatekitError, match="no labels"):
        _no_labels = GateStats()
        _no_labels.update(GATES)
        _ = _no_labels.class_open_fraction


def test_plots_write_png(tmp_path) -> None:
    paths = gatekit.plots.save_plots(_filled(), tmp_path, class_names=["a", "b", "c"])
    assert [p.name for p in paths] == [
        "gates_layer_open_fraction.png", "gates_open_per_sample.png", "gates_class_heatmap.png",
        "gates_class_gates.png",
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_class_gate_order_groups_by_layer_then_variance() -> None:
    # Two classes, two samples each.  Per-class open fractions, worked out by hand:
    #   layer a (gates 0-2): g0 [1, 1] always on; g1 [0.5, 0.5] var 0; g2 [1, 0] var 0.25
    #   layer b (gates 3-5): g3 [0, 0] always off; g4 [0.5, 0] var 1/16; g5 [0, 1] var 0.25
    gates = torch.tensor([[1, 1, 1, 0, 1, 0],
                          [1, 0, 1, 0, 0, 0],
                          [1, 1, 0, 0, 0, 1],
                          [1, 0, 0, 0, 0, 1]], dtype=torch.float32)
    stats = GateStats([Site("a", 0, 3), Site("b", 3, 3)], num_classes=2)
    stats.update(gates, torch.tensor([0, 0, 1, 1]))
    idx, spans = gatekit.plots.class_gate_order(stats)
    assert idx.tolist() == [2, 1, 5, 4]
    assert spans == [("a", 0, 2), ("b", 2, 4)]
    # At other thresholds the same counts give other input-dependent gates.
    idx, _ = gatekit.plots.class_gate_order(stats.with_thresholds(always_on=0.9, always_off=0.3))
    assert idx.tolist() == [2, 1, 5]


def test_with_thresholds_reclassifies_the_same_counts() -> None:
    stats = _filled()
    moved = stats.with_thresholds(always_on=0.8, always_off=0.2)
    # Open fractions 1, 0, 0.4, 0.8, 0.2 (see GATES).
    assert moved.always_on_mask.tolist() == [True, False, False, True, False]
    assert moved.always_off_mask.tolist() == [False, True, False, False, True]
    assert (stats.always_on_count, stats.always_off_count) == (1, 1)  # the original is unchanged
    assert moved.num_patterns == stats.num_patterns == 3
    assert torch.equal(moved.class_open_fraction, stats.class_open_fraction)
    moved.update(GATES, LABELS)
    assert stats.num_samples == 5 and moved.num_samples == 10
    with pytest.raises(GatekitError, match="always_off < always_on"):
        stats.with_thresholds(always_on=0.2, always_off=0.2)


def _fields(stats: GateStats) -> dict[str, object]:
    """Every field of ``stats``, copied (tensors cloned), to compare later."""
    return copy.deepcopy(vars(stats))


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_with_thresholds_copies_every_field() -> None:
    stats = _filled()
    stats._a_field_added_later = [1]  # a new field must be copied too, not shared
    before = _fields(stats)
    moved = stats.with_thresholds(always_on=0.8, always_off=0.2)
    assert vars(moved).keys() == vars(stats).keys()
    changed = {k for k in vars(stats) if not _same(vars(moved)[k], vars(stats)[k])}
    assert changed == {"always_on_threshold", "always_off_threshold"}
    assert moved.sites is stats.sites  # what the model is, shared
    moved._a_field_added_later.append(2)
    moved.update(GATES, LABELS)
    moved.merge(_filled())
    for name, value in before.items():  # updating the copy leaves every field of the original
        assert _same(vars(stats)[name], value), name


def test_thresholds_are_checked_the_same_way_everywhere() -> None:
    filled = _filled()
    for who, make in (
        ("GateStats", lambda on, off: GateStats(always_on=on, always_off=off)),
        ("with_thresholds", lambda on, off: filled.with_thresholds(always_on=on, always_off=off)),
    ):
        for on, off in ((0.2, 0.2), (0.5, -0.1), (1.5, 0.0)):
            expected = rf"{who} expects 0 <= always_off < always_on <= 1, got always_off={off}"
            with pytest.raises(GatekitError, match=expected):
                make(on, off)
        assert make(1.0, 0.0).always_on_threshold == 1.0


def test_the_open_threshold_is_named_once() -> None:
    assert gatekit.stats.OPEN_THRESHOLD == 0.5
    assert GateStats().open_threshold == gatekit.stats.OPEN_THRESHOLD
    s = GateStats()
    s.update(torch.tensor([[0.5, 0.51]]))  # above the threshold is open, at it is not
    assert s.per_sample_open.tolist() == [1]


def test_missing_matplotlib_says_how_to_install(monkeypatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(GatekitError, match=r"pip install gatekit\[examples\]"):
        gatekit.plots.plot_open_histogram(_filled())
