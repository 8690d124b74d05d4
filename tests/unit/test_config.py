from __future__ import annotations

from pathlib import Path

import pytest

from jlabgw.config import Settings, load_settings
from jlabgw.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "")
    s = load_settings(environ={"JLABGW_CONFIG": str(cfg)})
    assert s.backend == "local"
    assert s.kernel_name == "python3"
    assert s.notebook_dir == (Path.cwd() / "notebooks")
    assert s.notebook_dir.is_absolute()
    assert s.state_dir.is_absolute()


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", 'kernel_name = "from-file"\nlog_level = "debug"\n')
    env = {"JLABGW_CONFIG": str(cfg), "JLABGW_KERNEL_NAME": "from-env"}
    assert load_settings(environ=env).kernel_name == "from-env"
    assert load_settings({"kernel_name": "from-flag"}, environ=env).kernel_name == "from-flag"
    assert load_settings(environ={"JLABGW_CONFIG": str(cfg)}).kernel_name == "from-file"
    # a flag left unset (None) does not override
    assert load_settings({"kernel_name": None}, environ=env).kernel_name == "from-env"
    assert load_settings(environ=env).log_level == "DEBUG"


def test_paths_expand_user_and_become_absolute(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", 'notebook_dir = "~/nb"\n')
    s = load_settings(environ={"JLABGW_CONFIG": str(cfg)})
    assert s.notebook_dir == Path.home() / "nb"


def test_malformed_env_value_names_key_source_and_expectation(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "")
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"JLABGW_CONFIG": str(cfg), "JLABGW_BACKEND": "pbs"})
    message = str(info.value)
    assert "JLABGW_BACKEND='pbs'" in message
    assert "from environment" in message
    assert "'local'" in message
    assert "\n" not in message


def test_malformed_number_from_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", 'gateway_start_timeout = "soon"\n')
    with pytest.raises(ConfigError, match=r"JLABGW_GATEWAY_START_TIMEOUT='soon' \(from config"):
        load_settings(environ={"JLABGW_CONFIG": str(cfg)})


def test_negative_timeout_rejected(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "")
    with pytest.raises(ConfigError, match="greater than 0"):
        load_settings(environ={"JLABGW_CONFIG": str(cfg), "JLABGW_GATEWAY_START_TIMEOUT": "-1"})


def test_unknown_file_key_lists_valid_keys(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", 'notebok_dir = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key.*notebok_dir.*valid keys: .*notebook_dir"):
        load_settings(environ={"JLABGW_CONFIG": str(cfg)})


def test_invalid_toml(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "backend = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(environ={"JLABGW_CONFIG": str(cfg)})


def test_explicit_config_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"JLABGW_CONFIG": str(tmp_path / "missing.toml")})


def test_settings_are_frozen(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "")
    s = load_settings(environ={"JLABGW_CONFIG": str(cfg)})
    with pytest.raises(ValueError, match="frozen"):
        s.kernel_name = "x"  # type: ignore[misc]
    assert isinstance(s, Settings)


def test_empty_optional_values_mean_unset(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "")
    env = {
        "JLABGW_CONFIG": str(cfg),
        "JLABGW_SSH_KEY": "",
        "JLABGW_SSH_PORT": " ",
        "JLABGW_SSH_USER": "",
    }
    s = load_settings(environ=env)
    assert (s.ssh_key, s.ssh_port, s.ssh_user) == (None, None, None)
    with pytest.raises(ConfigError, match=r"JLABGW_SSH_PORT='70000'"):
        load_settings(environ={"JLABGW_CONFIG": str(cfg), "JLABGW_SSH_PORT": "70000"})


PROFILES = """
backend = "slurm"
slurm_time = "01:00:00"
ssh_host = "login.example.org"

[profiles.cpu]
slurm_partition = "standard"

[profiles.gpu]
slurm_partition = "gpu"
slurm_gres = "gpu:a100:1"
slurm_time = "04:00:00"
"""


def test_profiles_override_the_top_level_and_report_origins(tmp_path: Path) -> None:
    from jlabgw.config import resolve_settings

    cfg = write(tmp_path / "c.toml", PROFILES)
    plain = resolve_settings(environ={"JLABGW_CONFIG": str(cfg)})
    assert (plain.settings.profile, plain.settings.slurm_partition) == ("", "")
    assert plain.profiles == ["cpu", "gpu"]
    assert plain.origins["slurm_time"] == f"config file {cfg}"
    assert plain.origins["kernel_name"] == "default"

    env = {"JLABGW_CONFIG": str(cfg), "JLABGW_PROFILE": "gpu"}
    gpu = resolve_settings(environ=env)
    assert gpu.settings.profile == "gpu"
    assert (gpu.settings.slurm_gres, gpu.settings.slurm_time) == ("gpu:a100:1", "04:00:00")
    assert gpu.settings.ssh_host == "login.example.org"  # inherited from the top level
    assert gpu.origins["slurm_gres"] == f"config file {cfg} [profiles.gpu]"
    assert gpu.origins["profile"] == "environment"
    # a flag picks another profile; an env variable still beats the profile's value
    cpu = resolve_settings({"profile": "cpu"}, environ={**env, "JLABGW_SLURM_TIME": "00:30:00"})
    assert (cpu.settings.slurm_partition, cpu.settings.slurm_time) == ("standard", "00:30:00")
    assert cpu.origins["slurm_time"] == "environment"
    # the file may choose its own default profile
    chosen = write(tmp_path / "d.toml", 'profile = "cpu"\n' + PROFILES)
    assert load_settings(environ={"JLABGW_CONFIG": str(chosen)}).slurm_partition == "standard"


def test_profile_errors_name_the_fix(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", PROFILES)
    with pytest.raises(ConfigError, match=r"profile 'tpu' is not defined .* cpu, gpu"):
        load_settings(environ={"JLABGW_CONFIG": str(cfg), "JLABGW_PROFILE": "tpu"})
    bad = write(tmp_path / "bad.toml", PROFILES + 'slurm_gpus = "2"\n')
    with pytest.raises(ConfigError, match=r"\[profiles.gpu\]: unknown key\(s\) slurm_gpus"):
        load_settings(environ={"JLABGW_CONFIG": str(bad)})
    flat = write(tmp_path / "flat.toml", 'profiles = "gpu"\n')
    with pytest.raises(ConfigError, match="'profiles' must hold tables"):
        load_settings(environ={"JLABGW_CONFIG": str(flat)})


def test_secret_looking_values_are_masked() -> None:
    from jlabgw.log import mask_secrets, register_secret

    setup = "module load cuda\nexport WANDB_API_KEY=abc123 HF_TOKEN='x y'; --password=hunter2"
    masked = mask_secrets(setup)
    assert masked == ("module load cuda\nexport WANDB_API_KEY=*** HF_TOKEN=***; --password=***")
    register_secret("s3cr3t-token-value")
    assert mask_secrets("url?x=s3cr3t-token-value") == "url?x=***"
    assert mask_secrets("keyboard=1 monkey=2") == "keyboard=1 monkey=2"
