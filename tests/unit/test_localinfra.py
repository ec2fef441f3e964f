"""pa_devkit.localinfra.kafka without a JVM: configuration, cache location and the jar cache."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest

from pa_devkit.localinfra.broker_config import (
    new_cluster_id,
    read_properties,
    render_server_properties,
)
from pa_devkit.localinfra.errors import LocalKafkaError
from pa_devkit.localinfra.jars import CACHE_DIR_ENV, fetch_kafka, resolve_cache_dir

# A stand-in for mvn: it records each call and writes the jars named in $FAKE_MVN_JARS into
# the -DoutputDirectory it is given, or fails when $FAKE_MVN_FAIL is set.
FAKE_MVN = """\
import os, pathlib, sys
with open(os.environ["FAKE_MVN_CALLS"], "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_MVN_FAIL"):
    print("[ERROR] Could not resolve dependencies", file=sys.stderr)
    sys.exit(1)
out = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("-DoutputDirectory="))
pathlib.Path(out).mkdir(parents=True)
for name in os.environ["FAKE_MVN_JARS"].split():
    (pathlib.Path(out) / name).write_bytes(b"")
"""
GOOD_JARS = "kafka_2.13-9.9.9.jar slf4j-api-1.7.36.jar log4j-slf4j-impl-2.25.3.jar"


@pytest.fixture
def fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "mvn"
    script.write_text(f"#!{sys.executable}\n{FAKE_MVN}")
    script.chmod(0o755)
    calls = tmp_path / "mvn-calls.txt"
    calls.write_text("")
    monkeypatch.setenv("FAKE_MVN_CALLS", str(calls))
    monkeypatch.setenv("FAKE_MVN_JARS", GOOD_JARS)
    return script


def _mvn_calls(tmp_path: Path) -> int:
    return len((tmp_path / "mvn-calls.txt").read_text().splitlines())


def test_server_properties_describe_a_one_node_combined_cluster(tmp_path: Path) -> None:
    """The rendered server.properties makes one broker+controller on loopback with every
    internal topic at replication factor 1."""
    text = render_server_properties(
        port=19092, controller_port=19093, log_dirs=tmp_path / "kraft-logs"
    )
    path = tmp_path / "server.properties"
    path.write_text(text)
    properties = read_properties(path)

    assert properties["process.roles"] == "broker,controller"
    assert properties["node.id"] == "1"
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert properties["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert properties["controller.listener.names"] == "CONTROLLER"
    assert properties["log.dirs"] == str(tmp_path / "kraft-logs")
    assert properties["auto.create.topics.enable"] == "true"
    assert properties["num.partitions"] == "1"
    assert properties["group.initial.rebalance.delay.ms"] == "0"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    ):
        assert properties[key] == "1", key


def test_extra_properties_override_the_defaults(tmp_path: Path) -> None:
    """Extra properties replace a default value instead of adding a second line for it."""
    text = render_server_properties(
        port=1, controller_port=2, log_dirs=tmp_path, extra={"num.partitions": "3"}
    )
    assert text.count("num.partitions=") == 1
    assert "num.partitions=3\n" in text


def test_cluster_id_is_22_base64url_characters_of_16_bytes() -> None:
    """A cluster id is 16 random bytes as 22 base64url characters and never looks like an option."""
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_cache_dir_prefers_the_environment(tmp_path: Path) -> None:
    """$POINTS_ADJUSTER_CACHE_DIR wins over any other location."""
    found = resolve_cache_dir({CACHE_DIR_ENV: str(tmp_path / "c")}, package_dir=tmp_path)
    assert found == tmp_path / "c"


def test_cache_dir_is_the_checkouts_dot_cache(tmp_path: Path) -> None:
    """In a checkout (pyproject.toml beside devkit/) the cache is <repo>/.cache."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "devkit" / "pa_devkit").mkdir(parents=True)
    found = resolve_cache_dir({CACHE_DIR_ENV: " "}, package_dir=tmp_path / "devkit" / "pa_devkit")
    assert found == tmp_path / ".cache"


def test_cache_dir_outside_a_checkout_is_in_the_home(tmp_path: Path) -> None:
    """An installed package caches under ~/.cache/points-adjuster."""
    site = tmp_path / "lib" / "site-packages"
    (site / "pa_devkit").mkdir(parents=True)
    found = resolve_cache_dir({}, package_dir=site / "pa_devkit", home=tmp_path / "home")
    assert found == tmp_path / "home" / ".cache" / "points-adjuster"


def test_a_completed_fetch_is_reused_without_maven(tmp_path: Path, fake_mvn: Path) -> None:
    """Once the jars are complete a second fetch returns them without running Maven."""
    cache = tmp_path / "cache"
    libs = fetch_kafka("9.9.9", cache_dir=cache, mvn=str(fake_mvn))
    assert libs == cache / "kafka" / "9.9.9" / "libs"
    assert (libs / "kafka_2.13-9.9.9.jar").is_file()
    assert _mvn_calls(tmp_path) == 1

    assert fetch_kafka("9.9.9", cache_dir=cache, mvn="/nonexistent/mvn") == libs
    assert _mvn_calls(tmp_path) == 1


def test_an_interrupted_fetch_is_done_again(tmp_path: Path, fake_mvn: Path) -> None:
    """Jars without the completion marker are thrown away and fetched again."""
    cache = tmp_path / "cache"
    libs = fetch_kafka("9.9.9", cache_dir=cache, mvn=str(fake_mvn))
    (libs.parent / ".complete").unlink()
    (libs / "half-written.jar").write_bytes(b"")

    assert fetch_kafka("9.9.9", cache_dir=cache, mvn=str(fake_mvn)) == libs
    assert _mvn_calls(tmp_path) == 2
    assert not (libs / "half-written.jar").exists()


def test_a_failed_fetch_reports_mavens_output(
    tmp_path: Path, fake_mvn: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing Maven run raises LocalKafkaError with its output and leaves no marker."""
    monkeypatch.setenv("FAKE_MVN_FAIL", "1")
    cache = tmp_path / "cache"
    with pytest.raises(LocalKafkaError, match="Could not resolve dependencies"):
        fetch_kafka("9.9.9", cache_dir=cache, mvn=str(fake_mvn))
    assert not (cache / "kafka" / "9.9.9" / ".complete").exists()


def test_a_missing_slf4j_binding_is_refused(
    tmp_path: Path, fake_mvn: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jars that pair SLF4J 2.x with the 1.7 binding are refused: the broker would log nothing."""
    monkeypatch.setenv(
        "FAKE_MVN_JARS", "kafka_2.13-9.9.9.jar slf4j-api-2.0.17.jar log4j-slf4j-impl-2.25.3.jar"
    )
    with pytest.raises(LocalKafkaError, match="log4j-slf4j2-impl"):
        fetch_kafka("9.9.9", cache_dir=tmp_path / "cache", mvn=str(fake_mvn))


def test_missing_maven_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without mvn on PATH and no cached jars the error names Maven."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalKafkaError, match="Maven"):
        fetch_kafka("9.9.9", cache_dir=tmp_path / "cache")
