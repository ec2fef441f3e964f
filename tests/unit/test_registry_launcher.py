"""The schema registry launcher's download rules, without network or Java
(devkit/pa_devkit/localinfra/registry.py; the real registry is started by
tests/integration/test_local_registry.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pa_devkit.localinfra.errors import LocalRegistryError
from pa_devkit.localinfra.registry import (
    APICURIO_VERSION,
    LocalRegistry,
    apicurio_app_dir,
    default_apicurio_version,
    download_url,
    fetch_apicurio,
    runner_jar,
)


def test_the_download_comes_from_maven_centrals_layout_or_the_configured_repository() -> None:
    assert download_url("3.0.9", {}) == (
        "https://repo.maven.apache.org/maven2/io/apicurio/apicurio-registry-app/3.0.9/"
        "apicurio-registry-app-3.0.9-all.tar.gz"
    )
    mirror = {"POINTS_ADJUSTER_MAVEN_REPOSITORY": "https://mirror.example/m2/"}
    assert download_url("3.3.3", mirror).startswith("https://mirror.example/m2/io/apicurio/")


def test_the_version_comes_from_the_environment_or_the_default() -> None:
    assert default_apicurio_version({}) == APICURIO_VERSION
    assert default_apicurio_version({"POINTS_ADJUSTER_APICURIO_VERSION": " 3.3.3 "}) == "3.3.3"


def test_a_complete_download_is_reused_without_network(tmp_path: Path) -> None:
    app = apicurio_app_dir("9.9.9", tmp_path)
    app.mkdir(parents=True)
    (app / "apicurio-registry-app-9.9.9-runner.jar").touch()
    (app.parent / ".complete").write_text("apicurio-registry-app 9.9.9\n", encoding="utf-8")
    assert fetch_apicurio("9.9.9", cache_dir=tmp_path) == app
    assert runner_jar(app).name == "apicurio-registry-app-9.9.9-runner.jar"
    (app / "quarkus-run.jar").touch()  # the 3.1+ fast-jar layout wins
    assert runner_jar(app).name == "quarkus-run.jar"


@pytest.mark.parametrize("version", ["../../etc", "3.0", "latest"])
def test_a_version_that_is_not_one_is_refused_before_any_download(
    version: str, tmp_path: Path
) -> None:
    with pytest.raises(LocalRegistryError, match="not an Apicurio Registry version"):
        fetch_apicurio(version, cache_dir=tmp_path)


def test_the_url_and_ports_are_known_only_once_started() -> None:
    server = LocalRegistry(port=18081)
    assert server.url == "http://127.0.0.1:18081/apis/ccompat/v7"
    with pytest.raises(LocalRegistryError, match="management port"):
        _ = server.management_port
