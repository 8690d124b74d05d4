"""Settings: one object, resolved from CLI flags > ``JLABGW_*`` env > TOML file > defaults.

The TOML file is ``$JLABGW_CONFIG`` if set, else ``~/.config/jlabgw/config.toml``; its keys are
the setting names in lower case (``notebook_dir = "~/nb"``). Every value is validated by one
pydantic model; a bad value fails with one line naming the key, where it came from and what was
expected.

Several clusters fit in one file as profiles: ``[profiles.NAME]`` tables whose keys override the
file's top-level ones when ``JLABGW_PROFILE=NAME`` (or ``--profile NAME``, or ``profile = "NAME"``
at the top of the file) selects them. Environment variables and flags still win over both.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jlabgw.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "ENV_PREFIX",
    "Resolved",
    "Settings",
    "default_config_path",
    "load_settings",
    "profile_settings",
    "resolve_settings",
]

ENV_PREFIX = "JLABGW_"

# The largest message read from a kernel or the MCP client. The 10 MB print of the throughput
# target is ~10 MB of JSON, up to 6x that when its characters are escaped (\u0001), a 20 MB
# image 27 MB of base64: 256 MiB refuses only the pathological while one message's copies
# (JSON text, parsed, notebook) stay within ~1 GiB of server memory.
DEFAULT_MAX_MESSAGE = 256 * 2**20

# a job name becomes part of file names on the cluster and here: one plain path component
_JOB_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "jlabgw"


class Settings(BaseModel):
    """Effective configuration of one jlabgw process."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    profile: str = Field(
        "", description="Which [profiles.NAME] table of the config file applies (empty: none)."
    )
    backend: Literal["local", "slurm", "gridengine"] = Field(
        "local",
        description="Where the gateway runs: 'local' (a subprocess here), 'slurm' or "
        "'gridengine' (a batch job).",
    )
    notebook_dir: Path = Field(
        Path("notebooks"), description="Directory holding the notebooks; paths are confined to it."
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Private directory for gateway config, logs and server state (mode 0700).",
    )
    kernel_name: str = Field("python3", min_length=1, description="Kernel spec for new sessions.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of messages written to stderr."
    )
    gateway_start_timeout: float = Field(
        60.0, gt=0, description="Seconds to wait for the gateway to answer after it is started."
    )
    progress_interval: float = Field(
        5.0, gt=0, description="Seconds between progress notifications while a cell runs."
    )
    exec_wait: float = Field(
        30.0,
        gt=0,
        description="Seconds execute_code waits for a cell before returning the output so far "
        "(the cell keeps running; get_execution follows it).",
    )
    output_limit: int = Field(
        20000,
        ge=1000,
        description="Characters of text in one tool result; the middle is cut (the notebook "
        "keeps everything).",
    )
    image_max_px: int = Field(
        1568, ge=64, description="Longest side of an image in a tool result (downscaled)."
    )
    image_max_bytes: int = Field(
        1_000_000, ge=10_000, description="Size cap of one image in a tool result."
    )
    image_max_pixels: int = Field(
        50_000_000,
        ge=10_000,
        description="Images with more pixels (width x height, read from the header before "
        "decoding) are refused in tool results with a note (the notebook keeps them).",
    )
    max_message: int = Field(
        DEFAULT_MAX_MESSAGE,
        ge=2**20,
        description="Bytes in one message from a kernel or from the MCP client (a stdio line); "
        "a larger one is refused unread: the cell gets a note, the call an error.",
    )
    transfer_max_bytes: int = Field(
        2**30,
        ge=1,
        description="Largest file upload_file / download_file move (bytes); a bigger one is "
        "refused before anything is copied.",
    )
    transfer_root: str = Field(
        "",
        description="A directory besides the home directory (a scratch filesystem) where "
        "upload_file / download_file take absolute paths on the kernel's side (empty: none).",
    )
    # -- SSH (login node / compute nodes) ------------------------------------------------------
    ssh_host: str = Field(
        "", description="Login node host or ~/.ssh/config alias; empty: run cluster commands here."
    )
    ssh_port: int | None = Field(None, ge=1, le=65535, description="SSH port (else from config).")
    ssh_user: str | None = Field(None, description="SSH user name (else from ~/.ssh/config).")
    ssh_key: Path | None = Field(None, description="Private key file (else agent / config keys).")
    ssh_config: Path = Field(
        Path("~/.ssh/config"), description="OpenSSH client config to read host settings from."
    )
    known_hosts: Path = Field(
        Path("~/.ssh/known_hosts"), description="known_hosts file used to verify host keys."
    )
    compute_ssh_port: int = Field(22, ge=1, le=65535, description="sshd port on compute nodes.")
    ssh_timeout: float = Field(
        15.0, gt=0, description="Seconds to wait for an SSH connection (per hop) to be set up."
    )
    # -- SLURM batch job ---------------------------------------------------------------------
    job_name: str = Field("jlabgw", min_length=1, description="SLURM job name (reuse key).")
    slurm_partition: str = Field("", description="--partition (empty: the cluster default).")
    slurm_time: str = Field("08:00:00", description="--time walltime, e.g. 08:00:00.")
    slurm_cpus: int = Field(1, ge=1, description="--cpus-per-task (SLURM's default is 1).")
    slurm_mem: str = Field("", description="--mem, e.g. 32G (empty: the cluster default).")
    slurm_gres: str = Field("", description="--gres, e.g. gpu:1 (empty: no GPU request).")
    slurm_account: str = Field("", description="--account (empty: your default).")
    slurm_qos: str = Field("", description="--qos (empty: the default).")
    slurm_constraint: str = Field("", description="--constraint (empty: none).")
    slurm_extra: str = Field(
        "", description="Extra '#SBATCH ...' lines, one per line, added after the others."
    )
    # -- Grid Engine batch job (qsub options) ---------------------------------------------------
    ge_queue: str = Field("", description="-q queue, e.g. all.q (empty: the cluster default).")
    ge_h_rt: str = Field("08:00:00", description="-l h_rt= walltime, e.g. 08:00:00.")
    ge_pe: str = Field("", description="-pe parallel environment for JLABGW_GE_SLOTS (smp ...).")
    ge_slots: int = Field(1, ge=1, description="Slots in JLABGW_GE_PE (more than 1 needs a PE).")
    ge_resources: str = Field(
        "", description="-l resources, comma-separated, e.g. h_vmem=4G,gpu=1 (empty: none)."
    )
    ge_project: str = Field("", description="-P project (empty: your default).")
    ge_extra: str = Field(
        "", description="Extra '#$ -option ...' lines, one per line, added after the others."
    )
    batch_template: Path | None = Field(
        None, description="Your own sbatch template (same placeholders as the built-in one)."
    )
    remote_setup: str = Field(
        "", description="Shell lines run in the job before the gateway (module load, conda...)."
    )
    connection_dir: str = Field(
        "~/.jlabgw/connections",
        description="Directory on the cluster's shared filesystem for connection files.",
    )
    kernel_idle_timeout: int = Field(
        3600, ge=0, description="Seconds before an idle kernel is culled in the job (0: never)."
    )
    job_idle_timeout: int = Field(
        1800, ge=0, description="Seconds without any kernel before the job ends (0: never)."
    )
    queue_timeout: float = Field(
        600.0, gt=0, description="Seconds to wait for the job to start before giving up."
    )
    keep_job: bool = Field(False, description="Leave the batch job running when jlabgw exits.")
    walltime_warn: float = Field(
        10.0,
        ge=0,
        description="Minutes before the job's walltime from which results and progress warn "
        "(0: never).",
    )
    spare_kernel: bool = Field(
        True,
        description="Keep one kernel started ahead on the gateway, so a new session starts at "
        "once (costs one idle kernel's memory).",
    )
    eager_start: bool = Field(
        True,
        description="Start the gateway (submit the job) when the server starts, not on the "
        "first tool call.",
    )

    @field_validator(
        "notebook_dir",
        "state_dir",
        "ssh_key",
        "ssh_config",
        "known_hosts",
        "batch_template",
        mode="after",
    )
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # resolved, symlinks too: a notebook's path is its identity (holds, the session
        # table), and ~/nb -> /data/nb or macOS's /tmp -> /private/tmp must not make two
        return None if value is None else value.expanduser().resolve()

    @field_validator("ssh_port", "ssh_user", "ssh_key", "batch_template", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``JLABGW_SSH_KEY=`` means "not set", not the current directory."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("job_name", mode="after")
    @classmethod
    def _plain_job_name(cls, value: str) -> str:
        if not _JOB_NAME.fullmatch(value):
            raise ValueError(
                "a job name is used in file names: letters, digits, '-', '_' and '.' only, not "
                "starting with '.' or '-', at most 128 characters"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_PREFIX + "CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    return Path.home() / ".config" / "jlabgw" / "config.toml"


def _read_toml(path: Path, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} (from JLABGW_CONFIG) does not exist") from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    return data


class Resolved(NamedTuple):
    """Settings and, for each, where its value came from (for ``jlabgw config``)."""

    settings: Settings
    origins: dict[
        str, str
    ]  # setting -> "command line" | "environment" | "config file ..." | "default"
    config_path: Path
    profiles: list[str]  # the profiles the file defines


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings from ``flags`` (CLI), ``environ`` (default ``os.environ``) and the file.

    ``flags`` holds only the options the user actually gave (``None`` values are ignored).
    """
    return resolve_settings(flags, environ).settings


def _check_keys(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; "
            f"valid keys: {', '.join(Settings.model_fields)}"
        )


def resolve_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Resolved:
    """:func:`load_settings`, also saying where each value came from."""
    env = os.environ if environ is None else environ
    fields = Settings.model_fields
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}

    path = default_config_path(env)
    file_values = dict(_read_toml(path, required=bool(env.get(ENV_PREFIX + "CONFIG"))))
    profiles = file_values.pop("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(t, dict) for t in profiles.values()):
        raise ConfigError(
            f"config file {path}: 'profiles' must hold tables, e.g. [profiles.gpu] with "
            "settings under it"
        )
    _check_keys(f"config file {path}", file_values, set(fields))
    for name, table in profiles.items():
        _check_keys(f"config file {path} [profiles.{name}]", table, set(fields) - {"profile"})
    for key, value in file_values.items():
        values[key], origin[key] = value, f"config file {path}"

    # the profile: flag > env > the file's own choice
    profile = str((flags or {}).get("profile") or env.get(ENV_PREFIX + "PROFILE") or "")
    profile = profile or str(file_values.get("profile", ""))
    if profile:
        if profile not in profiles:
            defined = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(
                f"profile {profile!r} is not defined in {path} (profiles there: {defined}); "
                f"add a [profiles.{profile}] table or pick another with JLABGW_PROFILE"
            )
        for key, value in profiles[profile].items():
            values[key], origin[key] = value, f"config file {path} [profiles.{profile}]"

    for key in fields:
        env_key = ENV_PREFIX + key.upper()
        if env_key in env:
            values[key], origin[key] = env[env_key], "environment"
    for key, value in (flags or {}).items():
        if value is not None and key in fields:
            values[key], origin[key] = value, "command line"
    if profile:
        values["profile"] = profile

    try:
        settings = Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        where = origin.get(key, "default")
        given = values.get(key, "<missing>")
        expected = _expected(key, err["msg"])
        raise ConfigError(
            f"invalid setting {ENV_PREFIX}{key.upper()}={given!r} (from {where}): {expected}"
        ) from exc
    origins = {key: origin.get(key, "default") for key in fields}
    return Resolved(settings, origins, path, sorted(profiles))


def profile_settings(
    base: Settings, name: str, environ: Mapping[str, str] | None = None
) -> Settings:
    """The settings of a session started on profile ``name`` of the config file (another
    cluster, or another partition with its own defaults) by a server running with ``base``:
    the profile's table wins over ``base`` for every key it sets, so an environment that
    points the server at one cluster does not leak into another's profile; what the profile
    does not set (notebook dir, state dir ...) is the server's."""
    env = os.environ if environ is None else environ
    path = default_config_path(env)
    profiles = _read_toml(path, required=False).get("profiles", {})
    if not isinstance(profiles, dict) or not isinstance(profiles.get(name), dict):
        defined = ", ".join(sorted(profiles)) if isinstance(profiles, dict) else ""
        raise ConfigError(
            f"profile {name!r} is not defined in {path} (profiles there: {defined or 'none'}); "
            f"add a [profiles.{name}] table to start sessions on it"
        )
    table = profiles[name]
    _check_keys(f"config file {path} [profiles.{name}]", table, set(Settings.model_fields))
    # a job of its own unless the profile names one: the same name on the same cluster would
    # share (and lease) the server's own job, whatever the profile asks for
    job_name = table.get("job_name") or f"{base.job_name}-{name}"
    try:
        return Settings(**{**base.model_dump(), **table, "profile": name, "job_name": job_name})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        raise ConfigError(
            f"invalid setting {key}={table.get(key, '<missing>')!r} in [profiles.{name}] of "
            f"{path}: {_expected(key, err['msg'])}"
        ) from exc


def _expected(key: str, msg: str) -> str:
    field = Settings.model_fields.get(key)
    description = f" ({field.description})" if field is not None and field.description else ""
    return f"{msg}{description}"
