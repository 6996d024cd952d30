"""The instances a pull could not store are listed by their record in the owner-only store, never by UID, and an
instance stored by a later pull is no longer a failure."""

from __future__ import annotations

from medvision.sources.pacs.store import InstanceStore, pull_failures


def test_failures_are_the_still_missing_instances_in_record_order_with_their_last_reason(tmp_path):
    store = InstanceStore(tmp_path / "store")
    store.quarantine("1.2.3.4", "the PACS timed out")
    store.quarantine("1.2.3.5", "instance cannot be encoded (ValueError)")
    store.quarantine("1.2.3.6", "the PACS sent a different instance than the one asked for")
    store.quarantine("1.2.3.4", "the PACS refused the retrieve")  # retried, failed again
    store.put("1.2.3.5", b"DICM-bytes")  # retried and stored: not a failure any more
    store.close()

    failures = pull_failures(tmp_path / "store")
    assert [(f.record, f.reason) for f in failures] == [
        (1, "the PACS refused the retrieve"),
        (3, "the PACS sent a different instance than the one asked for"),
    ]
    assert not any("1.2.3" in repr(f) for f in failures)  # no UID leaves the store


def test_a_pull_still_running_is_read_without_touching_the_store(tmp_path):
    store = InstanceStore(tmp_path / "store")
    store.quarantine("9.9.9", "the PACS timed out")  # flushed at once into a segment, not yet merged
    temporary = store.instances / "ab" / ".x.tmp.dcm"
    temporary.parent.mkdir(parents=True)
    temporary.write_bytes(b"half")  # a running pull's file in flight
    assert [f.reason for f in pull_failures(tmp_path / "store")] == ["the PACS timed out"]
    assert temporary.exists()
    assert not (tmp_path / "store" / "quarantine.jsonl").exists()  # nothing merged by reading
