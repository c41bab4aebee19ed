"""The ML ensemble end to end on the team's real minute data, as a user runs it:
``nt8bridge train --quick`` -> registry -> ``model promote`` -> the ml strategy trading the champion
in a playback through a real sidecar; ``nt8bridge drift``; expiry and tampering refused."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

CLI = [sys.executable, "-m", "bridge.cli"]
FILES = ("ES 12-23.Last.txt", "NQ 12-23.Last.txt", "MES 12-23.Last.txt", "MYM 12-23.Last.txt")
MEMBERS = ("lightgbm", "xgboost", "lstm", "transformer")


def cli(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    """One quick training run on ES, NQ, MES and MYM (a few minutes), shared by the tests here."""
    tmp = tmp_path_factory.mktemp("ml")
    registry, db = tmp / "registry", f"sqlite:///{tmp / 'ml.sqlite'}"
    data = [str(shared_data / "nt8" / f) for f in FILES]
    started = time.perf_counter()
    out = cli("train", "--quick", "--data", *data, "--out", str(registry), "--db", db, "--json")
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads(out.stdout)
    summary["_seconds"] = time.perf_counter() - started
    return {"summary": summary, "registry": registry, "db": db, "data": data}


def test_quick_training_registers_all_four_members_and_the_meta_model_as_onnx(trained):
    s = trained["summary"]
    path = Path(s["path"])
    meta = json.loads((path / "model.json").read_text())
    for name in MEMBERS:
        proto = onnx.load(path / "members" / f"{name}.onnx")
        onnx.checker.check_model(proto)
        assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["probability"]
    onnx.checker.check_model(onnx.load(path / "meta.onnx"))
    assert meta["manifest"]["member_order"] == list(MEMBERS)
    # every ONNX graph agrees with its native model on out-of-sample rows
    assert set(meta["parity_max_abs"]) == {*MEMBERS, "meta"}
    assert max(meta["parity_max_abs"].values()) < 1e-4, meta["parity_max_abs"]
    # honest split: the test window starts where training ends, and training saw none of it
    assert meta["train_start_ns"] < meta["train_end_ns"] == meta["test_start_ns"] < meta["test_end_ns"]
    assert meta["rows"]["test"] > 10_000 and meta["rows"]["train"] > 20_000  # quick: every 5th training row
    # the data hash is the files' own
    h = hashlib.sha256()
    for f in sorted(trained["data"], key=lambda p: Path(p).name):
        h.update(Path(f).name.encode())
        h.update(Path(f).read_bytes())
    assert meta["data_sha256"] == h.hexdigest()
    ev = meta["metrics"]["evaluation"]
    for name in (*MEMBERS, "ensemble", "base_rate_model"):
        assert 0.0 < ev[name]["log_loss"] < 2.0 and 0.0 <= ev[name]["brier"] <= 1.0
    assert (path / "report.html").read_text().count("<svg") >= 1
    listed = json.loads(cli("model", "list", "--registry", str(trained["registry"]), "--db", trained["db"],
                            "--json").stdout)
    assert [(m["model_id"], m["status"]) for m in listed] == [(s["model_id"], "challenger")]


def test_the_sidecar_needs_no_torch_to_load_and_run_the_ensemble(trained):
    # an import hook, not sys.modules['torch'] = None: scipy probes sys.modules for torch and trips on None
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ImportError('no torch in a sidecar')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "import numpy as np, json\n"
            "from ml.serving import load_model\n"
            f"m = load_model({str(trained['registry'])!r}, {trained['summary']['model_id']!r})\n"
            "k = len(m.meta['feature_names'])\n"
            "p = m.ensemble.predict(np.zeros(k, np.float32), np.zeros((m.seq_len, k), np.float32))\n"
            "assert 'torch' not in sys.modules\n"
            "print(json.dumps([p.probability, sorted(p.members)]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    prob, members = json.loads(out.stdout)
    assert 0.0 < prob < 1.0 and members == sorted(MEMBERS)


def test_promotion_needs_an_operator_and_expired_or_changed_models_are_refused(trained, tmp_path):
    from ml.registry import ModelExpired, Registry, RegistryError
    reg_args = ("--registry", str(trained["registry"]), "--db", trained["db"])
    model_id = trained["summary"]["model_id"]
    refused = cli("model", "promote", model_id, *reg_args)
    assert refused.returncode == 2 and "--operator" in refused.stderr
    ok = cli("model", "promote", model_id, "--operator", "quinn", "--reason", "first model", *reg_args)
    assert ok.returncode == 0, ok.stderr
    listed = json.loads(cli("model", "list", *reg_args, "--json").stdout)
    assert [m["status"] for m in listed] == ["champion"]
    registry = Registry(trained["registry"], trained["db"])
    meta = json.loads((Path(trained["summary"]["path"]) / "model.json").read_text())
    with pytest.raises(ModelExpired, match="expired"):
        registry.load_checked(model_id, now_ns=meta["expires_ns"] + 1)
    unknown = cli("model", "show", "ens-nope", *reg_args)
    assert unknown.returncode == 2 and "ens-nope" in unknown.stderr
    # a changed artifact is named, never loaded
    member = Path(trained["summary"]["path"]) / "members" / "xgboost.onnx"
    original = member.read_bytes()
    try:
        member.write_bytes(original[:-16] + bytes(16))
        with pytest.raises(RegistryError, match="xgboost.onnx"):
            registry.load_checked(model_id, now_ns=time.time_ns())
    finally:
        member.write_bytes(original)
    assert registry.load_checked(model_id, now_ns=time.time_ns()).model_id == model_id


def test_the_ml_strategy_trades_the_champion_through_a_real_sidecar(trained, shared_data, tmp_path):
    """Promoted above; here the sidecar loads it and decides on the last days of ES and NQ minute bars."""
    from bridge.data.nt8files import Nt8Format, read_nt8, write_nt8
    from ml.registry import Registry
    registry = Registry(trained["registry"], trained["db"])
    if registry.champion() is None:
        registry.promote(trained["summary"]["model_id"], "quinn", "strategy test")
    files = []
    for name in ("ES 12-23.Last.txt", "NQ 12-23.Last.txt"):
        df = read_nt8(shared_data / "nt8" / name)
        tail = df[df["ts_ns"] >= df["ts_ns"].iloc[-1] - 3 * 86_400 * 1_000_000_000]
        files.append(tmp_path / name)
        write_nt8(tail, files[-1], Nt8Format.MINUTE)
    config = tmp_path / "ml.toml"
    config.write_text(f'[strategy]\nnames = "ml"\nml_model = "champion"\nml_registry = "{trained["registry"]}"\n'
                      f'ml_margin = 0.0\n\n[portfolio]\nregime_filter = false\n')
    db = tmp_path / "play.sqlite"
    out = cli("--config", str(config), "playback", "--data", *map(str, files), "--db", f"sqlite:///{db}", "--json",
              timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select strategy, outcome, inputs, rationale from decisions").fetchall()
    model_id = trained["summary"]["model_id"]
    ml_rows = [r for r in rows if model_id in r[0]]
    assert ml_rows, "the ml strategy never produced a signal from the champion"
    assert any(f"ensemble {model_id}" in rationale for *_, rationale in ml_rows)
    for strategy, outcome, inputs, rationale in ml_rows:
        assert strategy.startswith("ml@")  # the algorithm id names the code version and the model
        p = json.loads(inputs)["signal"]["win_probability"]
        assert 0.5 < p < 1.0  # signalled only above 1/2; Kelly after costs decides how much, if anything


def test_drift_command_reports_every_feature_against_the_training_reference(trained, shared_data):
    out = cli("drift", "--model", trained["summary"]["model_id"], "--data", trained["data"][0],
              "--registry", str(trained["registry"]), "--db", trained["db"])
    assert out.returncode in (0, 1), out.stderr
    report = json.loads(out.stdout)
    text = json.dumps(report)
    meta = json.loads((Path(trained["summary"]["path"]) / "model.json").read_text())
    assert all(name in text for name in meta["feature_names"])
    assert np.isfinite(trained["summary"]["train_seconds"])
