"""The benchmark's learning curves: read from nnU-Net's checkpoint, their end summarised, written
as CSV and a chart."""
import csv
import math

import pytest
import torch

from nnunet_mim.learning_curves import CURVES_FIELDS, curve_rows, end_change, end_of_training_table, end_span, \
    write_curves


def test_end_change_compares_the_last_tenth_of_the_epochs_with_the_tenth_before():
    assert end_span(60) == 6 and end_span(30) == 3 and end_span(4) == 1
    rising = [0.01 * epoch for epoch in range(60)]  # 0.01 per epoch: the last 6 epochs are 0.06 above the 6 before
    assert end_change(rising) == pytest.approx(0.06)
    assert end_change([0.2] * 48 + [0.7] * 12) == 0.0  # flat over its last fifth, whatever came before
    assert end_change([0.5, 0.4]) == pytest.approx(-0.1)
    assert math.isnan(end_change([0.3]))  # one epoch: nothing to compare with


def test_curve_rows_are_the_pseudo_dice_nnunet_logged(tmp_path):
    raw, ema = [0.1, 0.4, 0.3], [0.1, 0.13, 0.147]
    torch.save({"network_weights": {"w": torch.zeros(3)},
                "logging": {"mean_fg_dice": raw, "ema_fg_dice": ema, "train_losses": [1, 1, 1]}},
               tmp_path / "checkpoint_final.pth")
    rows = curve_rows(str(tmp_path), "MiM", 0.1, 2)
    assert [list(r) for r in rows] == [CURVES_FIELDS] * 3
    assert [(r["arm"], r["fraction"], r["fold"], r["epoch"]) for r in rows] == [("MiM", 0.1, 2, e) for e in range(3)]
    assert [r["pseudo_dice"] for r in rows] == pytest.approx(raw)
    assert [r["ema_pseudo_dice"] for r in rows] == pytest.approx(ema)
    assert curve_rows(str(tmp_path / "no_checkpoint"), "MiM", 0.1, 2) == []


def curves(arm, fraction, per_fold):
    """Rows of runs whose EMA is the raw curve plus 0.01 (told apart in the table)."""
    return [{"arm": arm, "fraction": fraction, "fold": fold, "epoch": epoch, "pseudo_dice": value,
             "ema_pseudo_dice": value + 0.01}
            for fold, curve in enumerate(per_fold) for epoch, value in enumerate(curve)]


def test_the_table_says_which_arm_was_still_learning(tmp_path):
    still_learning = [[0.02 * e for e in range(20)], [0.01 * e for e in range(20)]]  # +0.04 and +0.02 over 2 epochs
    converged = [[min(0.5, 0.1 * e) for e in range(20)]] * 2
    rows = curves("scratch", 0.1, converged) + curves("MiM", 0.1, still_learning) + curves("MiM", 1.0, [[0.3]])
    table = end_of_training_table(rows, "downstream")
    assert "downstream_curves.png" in table[0]
    assert "| 10% | scratch | 2 | 20 | 0.510 | +0.000 (2) | +0.000, +0.000 |" in table
    assert "| 10% | MiM | 2 | 20 | 0.295 | +0.030 (2) | +0.020, +0.040 |" in table
    assert "| 100% | MiM | 1 | 1 | 0.310 | n/a | n/a |" in table
    write_curves(rows, str(tmp_path), "a title", "downstream")
    with open(tmp_path / "downstream_curves.csv") as f:
        written = [(r["arm"], float(r["fraction"]), int(r["fold"]), int(r["epoch"]), float(r["pseudo_dice"]),
                    float(r["ema_pseudo_dice"])) for r in csv.DictReader(f)]
    assert written == [tuple(r.values()) for r in rows]
    assert (tmp_path / "downstream_curves.png").stat().st_size > 0
    write_curves([], str(tmp_path / "none"), "no curves", "downstream")  # runs without checkpoint_final.pth
    assert (tmp_path / "none" / "downstream_curves.csv").read_text().strip() == ",".join(CURVES_FIELDS)
    assert not (tmp_path / "none" / "downstream_curves.png").exists()
