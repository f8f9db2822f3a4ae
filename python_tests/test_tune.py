"""bench/tune.py's protocol pieces, on made-up rows (no training): the search points, the choice
on dev, the strongest base picked on dev (never on test), and the tables read back from its CSVs."""
import os
import sys

import pytest

pytest.importorskip("yaml")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import tune  # noqa: E402
from tables import write_csv  # noqa: E402


def test_settings_map_the_unit_cube():
    space = {"lr": ("log", 1e-4, 1e-2), "loss_args.margin": ("lin", 0.1, 0.3), "loss_args.k": ("choice", [None, 10])}
    assert tune.settings(space, [0.0, 0.0, 0.0]) == {"lr": 1e-4, "loss_args.margin": 0.1, "loss_args.k": None}
    assert tune.settings(space, [0.5, 0.5, 0.99]) == {"lr": 1e-3, "loss_args.margin": 0.2, "loss_args.k": 10}


def test_trials_start_with_the_shipped_config_and_repeat():
    first = tune.trial_settings("bcls", 5)
    assert first[0] == {} and len(first) == 5 and first == tune.trial_settings("bcls", 5)
    assert all(set(t) == set(tune.SPACES["bcls"]) for t in first[1:])
    assert tune.overrides({"lr": 0.001, "loss_args.k": None}) == ["lr=0.001", "loss_args.k=null"]


def test_choice_is_dev_rsum_then_dev_ndcg_then_the_earlier_trial():
    rows = [{"trial": 0, "dev_rsum": 400.0, "dev_ndcg@10": 0.9},
            {"trial": 1, "dev_rsum": 410.0, "dev_ndcg@10": 0.8},
            {"trial": 2, "dev_rsum": 410.0, "dev_ndcg@10": 0.85},
            {"trial": 3, "dev_rsum": 410.0, "dev_ndcg@10": 0.85}]
    assert tune.choose(rows)["trial"] == 2


def _final(loss, seed, rsum, kind="tuned"):
    return {"loss": loss, "settings": kind, "seed": seed, "rsum": rsum, "ndcg@10": 0.9, "kendall_tau": 0.3,
            **{k: 0.0 for k, _ in tune.COLUMNS if k not in ("rsum", "ndcg@10", "kendall_tau")}}


def test_strongest_base_is_picked_on_dev_and_differences_are_paired(tmp_path, capsys):
    """infonce has the better dev rsum, triplet_sn the better test rsum: the table's base is infonce."""
    chosen = {"infonce": {"trial": 1, "dev_rsum": 450.0, "dev_ndcg@10": 0.9, "lr": 1e-3,
                          "max_violation_warmup_epochs": 0, "loss_args": "{}"},
              "triplet_sn": {"trial": 2, "dev_rsum": 440.0, "dev_ndcg@10": 0.9, "lr": 1e-3,
                             "max_violation_warmup_epochs": 0, "loss_args": "{}"}}
    # paired: triplet_sn - infonce = +10, +12, +14 on seeds 0, 1, 2 (mean 12, std 2)
    final = [_final("infonce", s, 400.0 + 5 * s) for s in range(3)] + \
            [_final("triplet_sn", s, 410.0 + 7 * s) for s in range(3)]
    final += [dict(r, settings="default") for r in final]
    tune.report(["triplet_sn", "infonce"], [0, 1, 2], 2, 100, chosen, final)
    out = capsys.readouterr().out
    assert "strongest pairwise base by dev rsum (infonce)" in out
    assert "| triplet_sn | infonce | +12.0 ± 2.0 |" in out


def test_read_csv_gives_numbers_back(tmp_path):
    path = str(tmp_path / "rows.csv")
    write_csv(path, [{"loss": "infonce", "trial": 3, "dev_rsum": 451.25, "settings": '{"lr": 0.001}'}])
    assert tune.read_csv(path) == [{"loss": "infonce", "trial": 3, "dev_rsum": 451.25, "settings": '{"lr": 0.001}'}]
