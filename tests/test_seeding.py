"""NNUNET_MIM_SEED: the seed of every nnunet-mim trainer run."""
import pytest

from nnunet_mim.seeding import SEED_VARIABLE, run_seed


def test_the_seed_is_zero_unless_set_and_a_bad_one_is_refused_by_name(monkeypatch):
    monkeypatch.delenv(SEED_VARIABLE, raising=False)
    assert run_seed() == 0
    monkeypatch.setenv(SEED_VARIABLE, " 8 ")
    assert run_seed() == 8
    for bad in ("-1", "1.5", "eight", ""):
        monkeypatch.setenv(SEED_VARIABLE, bad)
        with pytest.raises(ValueError, match=f"{SEED_VARIABLE}="):
            run_seed()
