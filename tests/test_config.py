"""mirror.toml validation: every problem at once, named by key, with the config exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mirror.cli import main
from mirror.config import load_config
from mirror.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_shipped_mirror_toml_is_valid_and_selects_stable_kube3() -> None:
    config = load_config(REPO / "mirror.toml")
    assert config.select.versions == ("stable",)
    assert config.select.platforms == ("linux/amd64",)
    assert config.select.components == ("kubectl", "kubeadm", "kubelet")
    assert config.upstream.url == "https://dl.k8s.io"
    assert config.tree.root == REPO / "k8s-mirror"
    assert config.verify.identities[0].identity.startswith("krel-staging@")


def test_every_problem_is_reported_at_once_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        """
[upstream]
url = "ftp://example"
concurrency = 0
retrys = 3
[select]
versions = ["v1.34", "stable"]
platforms = ["linux/amd64", "plan9/mips"]
components = ["../kubectl"]
[verify]
unsigned_releases = "yolo"
[[verify.identities]]
identity = "x@example.com"
issuer = "http://insecure"
[extra]
"""
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = [p.split(":")[0] for p in info.value.problems]
    assert keys == [
        "extra",
        "upstream.retrys",
        "upstream.url",
        "upstream.concurrency",
        "select.versions[0]",
        "select.platforms[1]",
        "select.components[0]",
        "verify.unsigned_releases",
        "verify.identities[0].issuer",
    ]
    assert str(path) in str(info.value)


def test_relative_root_is_resolved_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc/mirror.toml"
    path.write_text('[tree]\nroot = "../srv/tree"\n')
    assert load_config(path).tree.root == tmp_path / "etc/../srv/tree"


def test_flags_override_the_file_and_are_validated_alike(tmp_path: Path) -> None:
    path = tmp_path / "mirror.toml"
    path.write_text('[select]\nplatforms = ["linux/amd64"]\n')
    config = load_config(path, {"select.platforms": ["linux/arm64"], "upstream.concurrency": 3})
    assert config.select.platforms == ("linux/arm64",)
    assert config.upstream.concurrency == 3
    with pytest.raises(ConfigError, match=r"select.platforms\[0\]"):
        load_config(path, {"select.platforms": ["arm64"]})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[upstream\n", "not valid TOML"),
        ("[tree]\nroot = 5\n", "tree.root"),
        ("[select]\nversions = []\n", "select.versions"),
    ],
)
def test_cli_reports_config_errors_in_one_line_with_exit_2(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "mirror.toml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["sync", "--config", str(path), "--dry-run"])
    assert result.exit_code == ConfigError.exit_code
    assert message in result.output
    assert result.output.count("\n") == 1
    assert list(tmp_path.iterdir()) == [path]


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sync", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == ConfigError.exit_code
    assert "file not found" in result.output
