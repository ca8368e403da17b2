"""Training: every term falls, resume repeats an uninterrupted run, configs are strict."""

import json
import math
import os

import pytest
import torch
import yaml

import ffdistill.training.trainer as train_module
from ffdistill import derivatives
from ffdistill.config import load_config
from ffdistill.errors import InputError
from ffdistill.training.loss import build_loss
from ffdistill.training.trainer import train_from_config


def _config(store, out, **extra):
    overrides = [
        f"data.store={store}",
        f"output={out}",
        "model.student=painn-tiny",
        "model.cutoff=4.0",
        "train.epochs=6",
        "train.validate_every=4",  # once an epoch: 13 training frames in batches of 4
        "train.lr=5e-3",
        "train.warmup_steps=2",
        "data.batch_size=4",
        "data.rows_per_structure=2",
        "loss.hessian=1.0",
    ]
    return load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()])


def test_a_few_epochs_lower_every_loss_term(emt_store, tmp_path):
    config = _config(
        emt_store,
        tmp_path / "run",
        **{
            "train.epochs": 15,
            "train.lr": 3e-3,
            "data.batch_size": 2,
            "train.validate_every": 7,
            "train.patience": 500,
        },
    )
    result = train_from_config(config, progress=False)
    first, last = result.history[0]["train"], result.history[-1]["train"]
    for term in ("energy", "forces", "hessian", "total"):
        assert last[term] < first[term], f"{term}: {first[term]:.4g} -> {last[term]:.4g}"
    saved = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))
    assert saved["loss"]["hessian"] == 1.0 and saved["model"]["student"] == "painn-tiny"
    assert os.path.isfile(result.best_path) and len(json.load(open(tmp_path / "run" / "history.json"))) == 15


def test_undistilled_run_never_computes_hessian_rows(emt_store, tmp_path, monkeypatch):
    calls = []
    original = derivatives._second  # every second-derivative product, by autograd or by differences
    monkeypatch.setattr(derivatives, "_second", lambda *a: calls.append(a[-1]) or original(*a))
    train_from_config(_config(emt_store, tmp_path / "run", **{"loss.hessian": 0, "train.epochs": 1}), progress=False)
    assert not any(calls)  # validation may score rows; training steps (differentiable) never compute them
    train_from_config(_config(emt_store, tmp_path / "distilled", **{"train.epochs": 1}), progress=False)
    assert any(calls)  # the spy sees training rows when they are asked for


def test_resume_repeats_the_uninterrupted_run(emt_store, tmp_path, monkeypatch):
    every7 = {"train.validate_every": 7}
    straight = train_from_config(_config(emt_store, tmp_path / "a", **every7), progress=False)
    original = train_module._save_checkpoint

    def crash_after_third_epoch(path, model, ema, optimizer, state, config, loss, plateau):
        original(path, model, ema, optimizer, state, config, loss, plateau)
        if state.step == 14:  # mid-epoch: the resumed epoch must skip the batches already taken
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_checkpoint", crash_after_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_from_config(_config(emt_store, tmp_path / "b", **every7), progress=False)
    monkeypatch.setattr(train_module, "_save_checkpoint", original)
    resumed = train_from_config(_config(emt_store, tmp_path / "b", **every7), resume=True, progress=False)
    assert [h["step"] for h in straight.history] == [7, 14, 21, 24]
    assert [h["step"] for h in resumed.history] == [h["step"] for h in straight.history]
    for a, b in zip(straight.history, resumed.history):
        assert b["val"]["force_mae_meV_per_A"] == pytest.approx(a["val"]["force_mae_meV_per_A"], rel=1e-5)


def test_validating_every_eighth_step_records_the_same_run_and_the_mean_of_its_steps(emt_store, tmp_path, monkeypatch):
    fixed = {"train.epochs": 5, "train.refit_references": "false"}  # refits move the energies between runs
    every = train_from_config(_config(emt_store, tmp_path / "a", **fixed), progress=False)
    assert [h["step"] for h in every.history] == [4, 8, 12, 16, 20]
    steps = []
    original = train_module.train_step
    monkeypatch.setattr(train_module, "train_step", lambda *a, **k: steps.append(original(*a, **k)) or steps[-1])
    sparse = train_from_config(
        _config(emt_store, tmp_path / "b", **fixed, **{"train.validate_every": 8}), progress=False
    )
    assert [h["step"] for h in sparse.history] == [8, 16, 20]  # the ceiling's step is always validated
    for h in sparse.history:
        same = next(a for a in every.history if a["step"] == h["step"])
        assert h["val"]["force_mae_meV_per_A"] == pytest.approx(same["val"]["force_mae_meV_per_A"], rel=1e-5)
    since_last = steps[sparse.history[0]["step"] : sparse.history[1]["step"]]
    by_hand = sum(s["forces"] for s in since_last) / len(since_last)
    assert sparse.history[1]["train"]["forces"] == pytest.approx(by_hand, rel=1e-9)
    with pytest.raises(InputError, match="train.validate_every=0 is out of range"):
        train_from_config(_config(emt_store, tmp_path / "c", **{"train.validate_every": 0}), progress=False)


def test_learning_rate_and_stopping_follow_the_validation_error_as_worked_out_by_hand(emt_store, tmp_path, monkeypatch):
    """Validation scores scripted (100, 80, then 79.5 meV/Å for ever), validated every 2 steps, gains of 1 %.

    Gains at steps 2 (from nothing) and 4 (80 < 0.99 · 100); 79.5 is no 1 % gain on 80. Plateau: lr_patience 4
    steps = 2 validations, i.e. reduce when a second bad validation follows (torch's patience 1): bad at steps
    6 and 8, so the learning rate halves after step 8's validation. best.pt: the lowest score, first at step 6.
    Stop: no gain since step 4 over max(patience 6, 0 · steps, 2 validations = 4) steps, i.e. at step 10."""
    scores = iter([100.0, 80.0] + [79.5] * 100)
    monkeypatch.setattr(
        train_module, "accuracy_of_batches", lambda model, batches: {"force_mae_meV_per_A": next(scores)}
    )
    used = []
    original_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    extra = {
        "train.lr": 1e-3,
        "train.warmup_steps": 2,
        "train.validate_every": 2,
        "train.lr_patience": 4,
        "train.lr_factor": 0.5,
        "train.patience": 6,
        "train.patience_fraction": 0,
        "train.min_improvement": 0.01,
        "train.refit_references": "false",
    }
    result = train_from_config(_config(emt_store, tmp_path / "run", **extra), progress=False)
    assert used == pytest.approx([5e-4] + [1e-3] * 7 + [5e-4] * 2, rel=1e-12)
    assert [h["step"] for h in result.history] == [2, 4, 6, 8, 10]
    assert result.stop_reason.startswith("converged") and "last 6 steps" in result.stop_reason
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert summary["steps"] == 10 and summary["best_step"] == 6 and summary["last_gain_step"] == 4


def test_a_non_finite_loss_stops_training_at_once_naming_the_step_and_the_term(emt_store, tmp_path, monkeypatch):
    from ffdistill.errors import TrainingError

    original = train_module.train_step
    calls = []

    def poisoned(*args, **kwargs):
        terms = original(*args, **kwargs)
        calls.append(1)
        return {**terms, "hessian": float("nan")} if len(calls) == 5 else terms

    monkeypatch.setattr(train_module, "train_step", poisoned)
    with pytest.raises(TrainingError, match="non-finite at step 5 .term hessian"):
        train_from_config(_config(emt_store, tmp_path / "run"), progress=False)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["state"]["step"] == 4  # the last good checkpoint is kept


def test_resume_without_checkpoint_or_with_corrupt_one_fails_clearly(emt_store, tmp_path):
    with pytest.raises(InputError, match="nothing to resume"):
        train_from_config(_config(emt_store, tmp_path / "c"), resume=True, progress=False)
    os.makedirs(tmp_path / "d")
    (tmp_path / "d" / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(InputError, match="corrupt"):
        train_from_config(_config(emt_store, tmp_path / "d"), resume=True, progress=False)


def test_config_rejects_unknown_keys_with_the_nearest_name(tmp_path):
    with pytest.raises(InputError, match="did you mean loss.hessian"):
        load_config(None, ["loss.hesian=3"])
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epocs: 3\n")
    with pytest.raises(InputError, match="did you mean train.epochs"):
        load_config(str(path))
    config = load_config(None, ["train.epochs=7", "data.row_temperature=0.5"])
    assert config.train.epochs == 7 and config.data.row_temperature == 0.5
    with pytest.raises(InputError, match="section.key=value"):
        load_config(None, ["nonsense"])


#: Two gloo ranks vs one process on the same global batch: equal up to float32 reduction order.
DDP_RELATIVE_TOLERANCE = 1e-4


def test_two_process_ddp_matches_single_process(emt_store, tmp_path):
    common = {"train.epochs": 2, "data.batch_size": 4, "data.rows_per_structure": 1}
    single = train_from_config(_config(emt_store, tmp_path / "single", **common), progress=False)
    ddp = train_from_config(_config(emt_store, tmp_path / "ddp", **common, **{"train.devices": 2}), progress=False)
    assert len(ddp.history) == len(single.history) == 2
    for a, b in zip(single.history, ddp.history):
        for key in ("force_mae_meV_per_A", "energy_mae_meV_per_atom", "hessian_row_mae"):
            assert b["val"][key] == pytest.approx(a["val"][key], rel=DDP_RELATIVE_TOLERANCE), key
    assert os.path.isfile(tmp_path / "ddp" / "best.pt") and os.path.isfile(tmp_path / "ddp" / "checkpoint.pt")


def test_unwritable_run_folder_fails_before_training(emt_store, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run folder should go")
    with pytest.raises(InputError, match="cannot write the run folder"):
        train_from_config(_config(emt_store, blocker / "run"), progress=False)


def test_hessian_weight_is_halved_once_near_the_teacher_error():
    from ffdistill.training.trainer import TrainState, _end_of_epoch

    config = load_config(None, ["loss.hessian=200", "loss.halve_hessian_within=0.05"])
    state = TrainState(hessian_weight=200.0)
    _end_of_epoch(state, {"force_mae_meV_per_A": 60.0}, {}, teacher_force_mae=0.050, config=config)
    assert state.hessian_weight == 200.0  # 60 > 1.05 * 50 meV/Å
    _end_of_epoch(state, {"force_mae_meV_per_A": 52.0}, {}, teacher_force_mae=0.050, config=config)
    _end_of_epoch(state, {"force_mae_meV_per_A": 51.0}, {}, teacher_force_mae=0.050, config=config)
    assert state.hessian_weight == 100.0 and state.hessian_halved  # halved once, not twice
    unknown = TrainState(hessian_weight=200.0)
    _end_of_epoch(unknown, {"force_mae_meV_per_A": 1.0}, {}, teacher_force_mae=None, config=config)
    assert unknown.hessian_weight == 200.0  # teacher error unknown: no halving


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_fails_with_one_line_naming_the_key(emt_store, tmp_path, capsys):
    from ffdistill.cli import main

    argv = ["train", f"data.store={emt_store}", f"output={tmp_path / 'run'}", "train.device=cuda", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.device=cuda" in err[0] and "CUDA is not available" in err[0]
    assert not (tmp_path / "run").exists()


def test_hessian_weight_decays_by_cosine_over_the_last_part_of_training():
    from ffdistill.training.trainer import hessian_weight_at

    assert hessian_weight_at(69, 100, 400.0, 0.7) == 400.0  # before 70 % of the steps: untouched
    assert hessian_weight_at(85, 100, 400.0, 0.7) == pytest.approx(200.0)  # half-way through the decay: cos(π/2)
    assert hessian_weight_at(100, 100, 400.0, 0.7) == pytest.approx(0.0, abs=1e-9)
    assert hessian_weight_at(100, 100, 400.0, None) == 400.0  # no decay asked


def test_the_hessian_term_is_scaled_by_the_training_frames_force_and_row_sizes_worked_out_by_loops(
    emt_store, tmp_path, monkeypatch
):
    """σ_F = mean over atoms of |F|, σ_H = Σ_frames mean_rows Σ_atoms |H[r]_atom| / Σ_frames atoms, from the
    store's raw arrays with plain loops; the run's loss_scales.json and the Hessian term it trains with agree."""
    from ffdistill.data.frames import split_indices
    from ffdistill.data.labels import LabelStore

    store = LabelStore(emt_store)
    train_idx, _, _ = split_indices(store.groups(), 0.2, 0.0, 0)
    force_norms, row_sums, atoms = [], 0.0, 0
    for i in train_idx:
        labels = store.frame(int(i))[1]
        n = len(labels["forces"])
        force_norms += [math.sqrt(sum(c * c for c in f)) for f in labels["forces"].tolist()]
        rows = labels["hessian_rows"].tolist()
        row_sums += sum(sum(math.sqrt(sum(c * c for c in a)) for a in row) for row in rows) / len(rows)
        atoms += n
    sigma_f, sigma_h = sum(force_norms) / len(force_norms), row_sums / atoms
    terms = []
    monkeypatch.setattr(train_module, "build_loss", lambda *a, **k: terms.append(k) or build_loss(*a, **k))
    config = _config(emt_store, tmp_path / "run", **{"train.epochs": 1, "data.val_fraction": 0.2})
    train_from_config(config, progress=False)
    scales = json.load(open(tmp_path / "run" / "loss_scales.json"))
    assert scales["force_scale_eV_per_A"] == pytest.approx(sigma_f, rel=1e-5)
    assert scales["hessian_scale_eV_per_A2"] == pytest.approx(sigma_h, rel=1e-5)
    assert terms[-1]["hessian_factor"] == pytest.approx(sigma_f / sigma_h, rel=1e-5)
    raw = _config(emt_store, tmp_path / "raw", **{"train.epochs": 1, "loss.hessian_normalisation": "none"})
    train_from_config(raw, progress=False)
    assert terms[-1]["hessian_factor"] == 1.0 and not os.path.exists(tmp_path / "raw" / "loss_scales.json")
