"""Settings: defaults, openevs.toml, OPENEVS_* variables and overrides, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from openevs.config import DEFAULT_AZS, ConfigError, Settings, load_settings


def test_defaults_without_file_or_environment(tmp_path: Path) -> None:
    settings = load_settings(env={"OPENEVS_CONFIG": str(tmp_path / "absent.toml")})
    assert settings == Settings()
    assert settings.azs == DEFAULT_AZS
    assert settings.listen_host_port == ("127.0.0.1", 8776)
    assert settings.endpoint == "http://127.0.0.1:8776"
    assert settings.agent_urls == {}


def test_overrides_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    config = tmp_path / "openevs.toml"
    config.write_text('region = "from-file"\nquota_volumes = 5\nnbd_port_base = 7\n')
    env = {"OPENEVS_CONFIG": str(config), "OPENEVS_QUOTA_VOLUMES": "6", "OPENEVS_NBD_PORT_BASE": "8"}
    settings = load_settings(env=env, nbd_port_base=9)
    assert (settings.region, settings.quota_volumes, settings.nbd_port_base) == ("from-file", 6, 9)
    assert settings.token_ttl_s == 24 * 3600


def test_environment_values_are_parsed(tmp_path: Path) -> None:
    env = {
        "OPENEVS_CONFIG": str(tmp_path / "absent.toml"),
        "OPENEVS_DATA_DIR": str(tmp_path),
        "OPENEVS_AZS": "az1.dc1, az2.dc2,",
        "OPENEVS_AGENT_URLS": "az1.dc1=http://h1:1,az2.dc2=http://h2:2",
        "OPENEVS_EMBEDDED_AGENTS": "off",
        "OPENEVS_HEALTH_INTERVAL_S": "0.25",
        "OPENEVS_LISTEN": "0.0.0.0:9000",
        "OPENEVS_TEST_SOMETHING_ELSE": "ignored",
    }
    settings = load_settings(env=env)
    assert settings.data_dir == tmp_path
    assert settings.azs == ("az1.dc1", "az2.dc2")
    assert settings.agent_urls == {"az1.dc1": "http://h1:1", "az2.dc2": "http://h2:2"}
    assert settings.embedded_agents is False
    assert settings.health_interval_s == 0.25
    assert settings.endpoint == "http://127.0.0.1:9000"
    assert settings.db_url == f"sqlite:///{tmp_path.resolve() / 'openevs.db'}"


def test_file_takes_arrays_and_tables(tmp_path: Path) -> None:
    config = tmp_path / "openevs.toml"
    config.write_text('azs = ["a1", "a2"]\nvolume_types = "SSD,SAS"\n[agent_urls]\na1 = "http://h:1"\n')
    settings = load_settings(env={"OPENEVS_CONFIG": str(config)})
    assert settings.azs == ("a1", "a2")
    assert settings.volume_types == ("SSD", "SAS")
    assert settings.agent_urls == {"a1": "http://h:1"}


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("OPENEVS_NBD_PORT_BASE", "many", "valid integer"),
        ("OPENEVS_AGENT_TIMEOUT_S", "soon", "valid number"),
        ("OPENEVS_EMBEDDED_AGENTS", "maybe", "valid boolean"),
        ("OPENEVS_LISTEN", "nowhere", "HOST:PORT"),
        ("OPENEVS_AZS", " , ", "at least one value"),
        ("OPENEVS_AGENT_URLS", "az1.dc1", "AZ=URL"),
    ],
)
def test_a_bad_variable_is_named(tmp_path: Path, name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"OPENEVS_CONFIG": str(tmp_path / "absent.toml"), name: value})
    assert str(caught.value).startswith(f"{name}: ")
    assert says in str(caught.value) and repr(value) in str(caught.value)


def test_a_bad_file_key_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "openevs.toml"
    config.write_text('quota_volumes = "lots"\n')
    with pytest.raises(ConfigError, match=r"^quota_volumes in .*openevs.toml: .*valid integer"):
        load_settings(env={"OPENEVS_CONFIG": str(config)})
    config.write_text("quota_volumes = [\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(env={"OPENEVS_CONFIG": str(config)})


def test_unknown_settings_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "openevs.toml"
    config.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(env={"OPENEVS_CONFIG": str(config)})
    with pytest.raises(ConfigError, match="unknown setting.*: colour$"):
        load_settings(env={"OPENEVS_CONFIG": str(tmp_path / "absent.toml")}, colour=1)


def test_settings_takes_only_its_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENEVS_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("OPENEVS_REGION", "from-env")
    assert Settings(azs=("a1",)).region == "region-1"
    assert load_settings().region == "from-env"
    with pytest.raises(Exception, match="frozen"):
        Settings().region = "changed"  # type: ignore[misc]


def test_arbitration_settings(tmp_path: Path) -> None:
    env = {"OPENEVS_CONFIG": str(tmp_path / "none.toml")}
    default = load_settings(env=env)
    assert default.witness_host_port is None and not default.auto_failover
    assert default.embedded_witness_port(2) == 8792
    assert load_settings(env=env, nbd_port_base=0).embedded_witness_port(2) == 0  # ephemeral
    s = load_settings(env={**env, "OPENEVS_WITNESS": "10.1.2.3:8790", "OPENEVS_WITNESS_AZ": "az3.dc3",
                           "OPENEVS_AUTO_FAILOVER": "true", "OPENEVS_AUTO_FAILOVER_AFTER_S": "5",
                           "OPENEVS_SUSPEND_IO_TIMEOUT_S": "0"})  # fmt: skip
    assert s.witness_host_port == ("10.1.2.3", 8790) and s.witness_az == "az3.dc3"
    assert s.auto_failover and s.auto_failover_after_s == 5 and s.suspend_io_timeout_s == 0
    for name, value, says in (
        ("OPENEVS_WITNESS", "nowhere", "HOST:PORT"),
        ("OPENEVS_WITNESS_AZ", "az9", "not one of OPENEVS_AZS"),
        ("OPENEVS_WITNESS_LEASE_S", "0.5", "OPENEVS_WITNESS_LEASE_S"),
    ):
        with pytest.raises(ConfigError, match=says):
            load_settings(env={**env, name: value})
