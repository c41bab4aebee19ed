"""ml.registry: atomic registration with checksums, promotion and rollback audited, clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from ml.drift import DriftReference
from ml.registry import (
    ArtifactError,
    ModelExpired,
    Registry,
    RegistryError,
    UnknownModel,
    make_model_id,
    sha256_file,
)

DAY_NS = 86_400 * 10**9
T0 = 1_700_438_400 * 10**9  # 2023-11-20 00:00 UTC


def _staging(tmp_path: Path, name: str = "staging", seed: int = 0) -> Path:
    folder = tmp_path / name
    (folder / "members").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    (folder / "members" / "lgbm.onnx").write_bytes(rng.bytes(256))
    (folder / "members" / "lstm.onnx").write_bytes(rng.bytes(512))
    (folder / "meta.onnx").write_bytes(rng.bytes(128))
    DriftReference.from_training(rng.normal(size=(200, 3)), ["a", "b", "c"], window=50).save(folder / "reference.npz")
    (folder / "report.html").write_text("<html></html>", encoding="utf-8")
    return folder


def _metadata(data_hash: str = "ab" * 32, expires_ns: int | None = None) -> dict[str, object]:
    return {"feature_names": ["a", "b", "c"], "feature_set_version": "fs-1",
            "label_config": {"upper_ticks": 8, "lower_ticks": 8, "max_bars": 30},
            "train_start_ns": T0 - 30 * DAY_NS, "train_end_ns": T0, "data_sha256": data_hash,
            "code_version": "abc1234", "metrics": {"log_loss": 0.68, "auc": 0.56}, "expires_ns": expires_ns,
            "resolved_share": 0.83}


@pytest.fixture(params=["disk", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry(request: pytest.FixtureRequest, tmp_path: Path):
    url = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'rec.sqlite'}"
    elif request.param == "postgres":
        url = str(request.getfixturevalue("pg_clean_url"))
    reg = Registry(tmp_path / "models", url)
    yield reg
    reg.close()


def test_register_copies_hashes_and_lists(registry: Registry, tmp_path: Path) -> None:
    staging = _staging(tmp_path)
    record = registry.register(staging, _metadata(), now_ns=T0 + 5)
    assert record.model_id == make_model_id("ab" * 32, T0 + 5)
    assert record.model_id.startswith("ens-20231120-") and len(record.model_id) == len("ens-20231120-") + 8
    assert record.status == "challenger" and record.path == registry.root / record.model_id
    assert set(record.artifacts) == {"members/lgbm.onnx", "members/lstm.onnx", "meta.onnx", "reference.npz",
                                     "report.html"}
    assert record.artifacts["meta.onnx"] == sha256_file(staging / "meta.onnx")
    doc = json.loads((record.path / "model.json").read_text())
    assert doc["artifacts"] == record.artifacts and doc["resolved_share"] == 0.83
    assert staging.is_dir()  # the staging folder is left as it was
    assert [r.model_id for r in registry.list()] == [record.model_id]
    got = registry.get(record.model_id)
    assert got.label_config == {"upper_ticks": 8, "lower_ticks": 8, "max_bars": 30}
    assert got.extra == {"resolved_share": 0.83}
    assert got.in_db is (None if registry.db_url is None else True)
    assert not list(registry.root.glob(".*partial"))


def test_register_refuses_incomplete_metadata(registry: Registry, tmp_path: Path) -> None:
    meta = _metadata()
    del meta["data_sha256"]
    with pytest.raises(RegistryError, match="lacks \\['data_sha256'\\]"):
        registry.register(_staging(tmp_path), meta)


def test_unknown_id_says_how_to_list(registry: Registry) -> None:
    with pytest.raises(UnknownModel, match="no model 'ens-nope'.*Registry\\(root\\).list\\(\\)"):
        registry.get("ens-nope")


def test_promote_rollback_and_audit(registry: Registry, tmp_path: Path) -> None:
    a = registry.register(_staging(tmp_path, "a", 1), _metadata("aa" * 32), now_ns=T0)
    b = registry.register(_staging(tmp_path, "b", 2), _metadata("bb" * 32), now_ns=T0 + 1)
    assert registry.champion() is None
    with pytest.raises(RegistryError, match="named operator"):
        registry.promote(a.model_id, "  ", "first model")
    with pytest.raises(RegistryError, match="reason"):
        registry.promote(a.model_id, "alice", "")
    registry.promote(a.model_id, "alice", "first model", now_ns=T0 + 10)
    registry.promote(b.model_id, "bob", "better log-loss in shadow", now_ns=T0 + 20)
    assert registry.champion().model_id == b.model_id
    assert registry.get(a.model_id).status == "retired"
    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote(b.model_id, "bob", "again")

    restored = registry.rollback("carol", "live P&L worse than shadow", now_ns=T0 + 30)
    assert restored.model_id == a.model_id and restored.status == "champion"
    assert registry.get(b.model_id).status == "retired"
    with pytest.raises(RegistryError, match="did not replace another model"):
        registry.rollback("carol", "once more")
    assert registry.load_checked(now_ns=T0 + 40).model_id == a.model_id

    if registry.db_url is not None:
        events = [(e["model_id"], e["event"], e["operator"], e["previous_champion"]) for e in registry.events()]
        assert events == [
            (a.model_id, "register", "registry", None),
            (b.model_id, "register", "registry", None),
            (a.model_id, "promote", "alice", None),
            (a.model_id, "retire", "bob", a.model_id),
            (b.model_id, "promote", "bob", a.model_id),
            (b.model_id, "retire", "carol", b.model_id),
            (a.model_id, "rollback", "carol", b.model_id),
        ]
        assert registry.events(b.model_id)[-1]["reason"] == "live P&L worse than shadow"


def test_rollback_and_load_work_without_a_database(tmp_path: Path) -> None:
    a = Registry(tmp_path / "models").register(_staging(tmp_path, "a", 1), _metadata("aa" * 32), now_ns=T0)
    reg = Registry(tmp_path / "models")
    reg.promote(a.model_id, "alice", "first")
    assert Registry(tmp_path / "models").load_checked().model_id == a.model_id


def test_corrupted_or_missing_artifact_is_named(registry: Registry, tmp_path: Path) -> None:
    record = registry.register(_staging(tmp_path), _metadata(), now_ns=T0)
    target = record.path / "members" / "lstm.onnx"
    target.write_bytes(target.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ArtifactError, match="members/lstm.onnx is corrupted or was changed"):
        registry.load_checked(record.model_id, now_ns=T0)
    with pytest.raises(ArtifactError, match="corrupted"):
        registry.promote(record.model_id, "alice", "should refuse")
    (record.path / "meta.onnx").unlink()
    with pytest.raises(ArtifactError, match="meta.onnx is missing"):
        registry.verify(registry.get(record.model_id))


def test_expired_model_says_when_and_what_to_do(registry: Registry, tmp_path: Path) -> None:
    record = registry.register(_staging(tmp_path), _metadata(expires_ns=T0 + DAY_NS), now_ns=T0)
    assert registry.load_checked(record.model_id, now_ns=T0 + DAY_NS - 1).model_id == record.model_id
    with pytest.raises(ModelExpired, match="expired at 2023-11-21T00:00:00Z.*retrain it, or promote another model"):
        registry.load_checked(record.model_id, now_ns=T0 + DAY_NS + 3600 * 10**9)
    with pytest.raises(ModelExpired):
        registry.promote(record.model_id, "alice", "too late", now_ns=T0 + 2 * DAY_NS)
    if registry.db_url is not None:
        assert [e["event"] for e in registry.events(record.model_id)].count("expire") == 2


def test_no_champion_says_how_to_promote(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="no champion.*promote"):
        registry.load_checked()


def test_disk_models_without_rows_still_list_and_sync(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    disk_only = Registry(tmp_path / "models")
    record = disk_only.register(_staging(tmp_path), _metadata(), now_ns=T0)
    reg = Registry(tmp_path / "models", f"sqlite:///{tmp_path / 'rec.sqlite'}")
    try:
        with caplog.at_level(logging.WARNING, logger="nt8bridge.ml.registry"):
            listed = reg.list()
        assert [(r.model_id, r.in_db) for r in listed] == [(record.model_id, False)]
        assert "without a database row" in caplog.text and record.model_id in caplog.text
        assert reg.sync() == [record.model_id]
        assert reg.list()[0].in_db is True
        assert reg.sync() == []
    finally:
        reg.close()
