"""train.py: configs (typos are errors), a short run on generated data in the standard format,
exact resume after a crash mid-epoch, and refusing a checkpoint from another config."""
import json
import os

import numpy as np
import pytest
import torch

from itr_kernels.app import checkpoint, train
from itr_kernels.app.config import CONFIG_DIR, ConfigError, load_config, parse_overrides
from itr_kernels.app.data import write_split

pytest.importorskip("yaml")


def test_default_config_and_overrides():
    cfg = load_config(None, ["lr=1e-3", "epochs=3", "loss_args.weight=0.25", "data_root=/x"])
    assert cfg["lr"] == 1e-3 and cfg["epochs"] == 3 and cfg["loss_args"] == {"weight": 0.25}
    assert cfg["loss"] == "listwise"
    bcls = load_config(os.path.join(CONFIG_DIR, "bcls.yaml"), ["seed=4"])
    assert bcls["loss"] == "bcls" and bcls["seed"] == 4 and bcls["loss_args"]["mu"] == 1.0
    assert parse_overrides(["a.b=[1, 2]", "c="]) == {"a": {"b": [1, 2]}, "c": None}


def test_config_typos_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'ephocs'.*did you mean 'epochs'"):
        load_config(None, ["ephocs=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: triplet\nbatchsize: 64\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'batchsize'.*'batch_size'"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="epochs must be a int"):
        load_config(None, ["epochs=ten"])
    with pytest.raises(ConfigError, match="amp must be a bool"):
        load_config(None, ["amp=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match=r"loss_args: unknown argument\(s\) \['wieght'\]"):
        train.make_loss("listwise", {"wieght": 0.3})
    with pytest.raises(ValueError, match="loss must be one of"):
        train.make_loss("hinge", {})


@pytest.fixture
def tiny_data(tmp_path):
    return make_tiny_data(tmp_path)


def make_tiny_data(tmp_path):
    """A small retrieval problem in the standard format: image features are a noisy linear map of
    word-count caption features, so the model can learn it."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    proj = rng.standard_normal((40, 24)).astype(np.float32)
    root = tmp_path / "data"
    for split, n in (("train", 96), ("dev", 24), ("test", 24)):
        caps, ims = [], []
        for _ in range(n):
            topic = rng.choice(40, 4, replace=False)
            for _ in range(2):   # m = 2 captions per image, overlapping words
                caps.append(" ".join(words[t] for t in rng.choice(topic, 3)))
            bag = np.zeros(40, np.float32)
            bag[topic] = 1
            ims.append(bag @ proj + 0.1 * rng.standard_normal(24).astype(np.float32))
        write_split(str(root), split, np.stack(ims), caps)
    return str(root)


def cfg_for(data, out, loss="listwise", **kw):
    over = [f"data={data}", f"out_dir={out}", "text_encoder=tfidf", f"loss={loss}", "epochs=3", "batch_size=16",
            "embed_dim=16", "hidden=32", "progress=false", "tensorboard=false", "num_threads=1", "lr=2e-3"]
    return load_config(None, over + [f"{k}={v}" for k, v in kw.items()])


@pytest.mark.parametrize("loss", ["triplet", "listwise", "bcls", "infonce", "triplet_sn", "infonce_kendall",
                                  "triplet_sum_sndcg"])
def test_short_run_learns_and_reports(tiny_data, tmp_path, loss):
    report = train.run(cfg_for(tiny_data, tmp_path / "run", loss, epochs=10, lr=5e-3), log=lambda *_: None)
    t = report["test"]
    # chance rsum on 24 images x 48 captions is ~ 2 * (1 + 5 + 10) / 24 * 100 ~ 135
    assert t["rsum"] > 200, t
    for key in ("i2t_r1", "t2i_r10", "ndcg@10", "kendall_tau", "i2t_map_r", "t2i_r_precision"):
        assert np.isfinite(t[key])
    out = tmp_path / "run"
    for f in ("best.pt", "last.pt", "log.csv", "test_report.json", "curves.png"):
        assert (out / f).is_file(), f
    assert json.loads((out / "test_report.json").read_text())["test"]["rsum"] == pytest.approx(t["rsum"])
    ckpt = torch.load(out / "last.pt", weights_only=True)   # loads without unpickling code
    assert ckpt["epoch"] == 10 and len(ckpt["history"]) == 10


class Crash(Exception):
    pass


@pytest.mark.parametrize("kw", [{}, {"loss": "triplet", "max_violation_warmup_epochs": 1},
                                {"loss": "infonce", "loss_args.learn_temperature": "true"}],
                         ids=["listwise", "max_violation_warmup", "learned_temperature"])
def test_resume_after_crash_mid_epoch_is_exact(tiny_data, tmp_path, monkeypatch, kw):
    # the warm-up switches to max violation at epoch 2, where the run crashes and resumes; the
    # learned temperature is a parameter of the loss, saved with the model
    full = train.run(cfg_for(tiny_data, tmp_path / "a", **kw), log=lambda *_: None)

    # Same run, crashed in the middle of epoch 2: one relevance call per step, 96 // 16 = 6 steps an
    # epoch, so call 11 is step 5 of epoch 2.
    calls = {"n": 0}
    real = train.rsc_relevance

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 11:
            raise Crash
        return real(*a, **k)

    monkeypatch.setattr(train, "rsc_relevance", crashing)
    cfg = cfg_for(tiny_data, tmp_path / "b", **kw)
    with pytest.raises(Crash):
        train.run(cfg, log=lambda *_: None)
    monkeypatch.setattr(train, "rsc_relevance", real)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = train.run(cfg, resume=str(tmp_path / "b" / "last.pt"), log=lambda *_: None)

    assert resumed["test"] == full["test"]          # bit-identical metrics
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["loss"].keys() == b["loss"].keys() and all(torch.equal(a["loss"][k], b["loss"][k]) for k in a["loss"])
    assert a["history"] == [dict(h, seconds=a["history"][i]["seconds"]) for i, h in enumerate(b["history"])]


def test_checkpoint_from_another_config_is_refused(tiny_data, tmp_path):
    train.run(cfg_for(tiny_data, tmp_path / "a", epochs=1), log=lambda *_: None)
    other = cfg_for(tiny_data, tmp_path / "a", epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="another config.*lr"):
        checkpoint.load(str(tmp_path / "a" / "last.pt"), other)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(str(tmp_path / "nothing.pt"), other)


def test_cli_reports_config_errors(capsys):
    with pytest.raises(SystemExit, match="unknown config key 'lossargs'"):
        train.main(["lossargs.weight=1"])


def test_every_config_builds_its_loss():
    names = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml") and f != "rerank.yaml")
    assert {"infonce", "triplet_sum", "infonce_sndcg", "infonce_kendall", "triplet_sum_sndcg"} <= set(names)
    for name in names:
        cfg = load_config(os.path.join(CONFIG_DIR, f"{name}.yaml"))
        loss_fn = train.make_loss(cfg["loss"], cfg["loss_args"])
        s = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
        assert torch.isfinite(loss_fn(s @ s.T, torch.rand(6, 6, dtype=torch.float64))), name
    assert not train.make_loss("triplet_sum_kendall", {}).base.max_violation
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['margin'\].*temperature"):
        train.make_loss("infonce_sndcg", {"margin": 0.2})


def test_max_violation_warmup_is_the_sum_of_hinges_until_it_ends(tiny_data, tmp_path):
    # warm-up over every epoch: the run of the sum of hinges, bit for bit; a shorter one differs
    quiet = lambda *_: None   # noqa: E731
    whole = train.run(cfg_for(tiny_data, tmp_path / "a", loss="triplet", max_violation_warmup_epochs=3), log=quiet)
    hinges = train.run(cfg_for(tiny_data, tmp_path / "b", loss="triplet", **{"loss_args.max_violation": "false"}),
                       log=quiet)
    part = train.run(cfg_for(tiny_data, tmp_path / "c", loss="triplet", max_violation_warmup_epochs=1), log=quiet)
    hard = train.run(cfg_for(tiny_data, tmp_path / "d", loss="triplet"), log=quiet)
    assert whole["test"] == hinges["test"]
    assert part["test"] != hinges["test"] and part["test"] != hard["test"]
    with pytest.raises(ValueError, match="max_violation_warmup_epochs=2: loss 'infonce' has no max-violation"):
        train.run(cfg_for(tiny_data, tmp_path / "e", loss="infonce", max_violation_warmup_epochs=2), log=quiet)


def test_run_without_test_split_reports_dev_only(tiny_data, tmp_path, monkeypatch):
    evaluated = []
    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda m, split, *a, **k: evaluated.append(split) or real(m, split, *a, **k))
    report = train.run(cfg_for(tiny_data, tmp_path / "a", epochs=2), log=lambda *_: None, test=False)
    assert "test" not in report and report["dev"]["rsum"] > 0 and len(evaluated) == 2
    assert not (tmp_path / "a" / "test_report.json").exists()
