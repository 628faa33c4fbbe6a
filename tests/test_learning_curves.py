"""The benchmark's learning curves: read from nnU-Net's checkpoint, the last stretch summarised,
written as CSV and a chart."""
import csv
import math

import pytest
import torch

from nnunet_mim.learning_curves import (curve_rows, end_of_training_table, end_rise, end_span, read_curve,
                                        write_curves)


def test_end_rise_is_the_rise_over_the_last_tenth_of_the_epochs():
    rising = [0.01 * epoch for epoch in range(60)]  # 0.01 per epoch: 6 epochs in the last tenth
    assert end_span(60) == 6 and end_span(30) == 3 and end_span(4) == 1
    assert end_rise(rising) == pytest.approx(0.06)
    assert end_rise([0.2] * 50 + [0.7] * 10) == 0.0  # flat over its last tenth, whatever came before
    assert end_rise([0.5, 0.4]) == pytest.approx(-0.1)
    assert math.isnan(end_rise([0.3]))  # one epoch: nothing to compare with


def test_read_curve_takes_the_ema_pseudo_dice_nnunet_logged(tmp_path):
    ema = [0.1, 0.25, 0.3]
    torch.save({"network_weights": {"w": torch.zeros(3)}, "logging": {"ema_fg_dice": ema, "mean_fg_dice": [0, 0, 0]}},
               tmp_path / "checkpoint_final.pth")
    assert read_curve(str(tmp_path)) == pytest.approx(ema)
    assert [(r["epoch"], r["ema_pseudo_dice"]) for r in curve_rows(str(tmp_path), "MiM", 0.1, 2)] == \
        list(enumerate(pytest.approx(v) for v in ema))


def curves(arm, fraction, per_fold):
    return [{"arm": arm, "fraction": fraction, "fold": fold, "epoch": epoch, "ema_pseudo_dice": value}
            for fold, curve in enumerate(per_fold) for epoch, value in enumerate(curve)]


def test_the_table_says_which_arm_was_still_learning(tmp_path):
    still_learning = [[0.02 * e for e in range(20)], [0.01 * e for e in range(20)]]  # rise 0.04 and 0.02 over 2
    converged = [[min(0.5, 0.1 * e) for e in range(20)]] * 2
    rows = curves("scratch", 0.1, converged) + curves("MiM", 0.1, still_learning) + curves("MiM", 1.0, [[0.3]])
    table = end_of_training_table(rows, "downstream")
    assert "downstream_curves.png" in table[0]
    assert "| 10% | scratch | 2 | 20 | 0.500 | +0.000 (2) | +0.000 to +0.000 |" in table
    assert "| 10% | MiM | 2 | 20 | 0.285 | +0.030 (2) | +0.020 to +0.040 |" in table
    assert "| 100% | MiM | 1 | 1 | 0.300 | n/a | n/a |" in table
    write_curves(rows, str(tmp_path), "a title", "downstream")
    with open(tmp_path / "downstream_curves.csv") as f:
        written = [(r["arm"], float(r["fraction"]), int(r["fold"]), int(r["epoch"]), float(r["ema_pseudo_dice"]))
                   for r in csv.DictReader(f)]
    assert written == [tuple(r.values()) for r in rows]
    assert (tmp_path / "downstream_curves.png").stat().st_size > 0
