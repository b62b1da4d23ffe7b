"""The configuration of `microseg run` (one YAML file, validated; errors
name file and line, datapath/configfile.py)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from appliance.priority import check_usable, parse_cpulist
from datapath.config import DatapathConfig
from datapath.enums import SLOWPATH_WORKERS_MAX
from slowpath.eve_sinks import REDIS_MODES, REDIS_STREAM_MAXLEN


class FileSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    max_bytes: int = Field(100 << 20, ge=0)     # 0: never rotate
    backups: int = Field(5, ge=0, le=1000)


class SyslogSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str
    port: int = Field(514, ge=1, le=65535)
    transport: str = "udp"
    app_name: str = "microseg"

    @field_validator("transport")
    @classmethod
    def _transport(cls, v):
        if v not in ("udp", "tcp"):
            raise ValueError("transport must be udp or tcp")
        return v


class RedisSinkConfig(BaseModel):
    """Suricata's eve-log ``redis`` settings, with snake_case names."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    # A name or address; a path beginning with "/" is a Unix socket.
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(6379, ge=1, le=65535)
    # list (LPUSH) | rpush | channel (PUBLISH) | stream (XADD); Suricata's
    # aliases lpush, publish and xadd are accepted too.
    mode: str = "list"
    key: str = Field("microseg", min_length=1)
    db: int = Field(0, ge=0)
    username: str | None = None
    password: str | None = None
    # Stream entries kept (XADD MAXLEN ~ n, "=" with stream_trim_exact); 0: never trimmed.
    stream_maxlen: int = Field(REDIS_STREAM_MAXLEN, ge=0)
    stream_trim_exact: bool = False

    @field_validator("mode")
    @classmethod
    def _mode(cls, v):
        if v not in REDIS_MODES:
            raise ValueError(f"mode must be one of {', '.join(REDIS_MODES)}")
        return v

    @model_validator(mode="after")
    def _credentials(self):
        if self.username and not self.password:
            raise ValueError("username without password (Redis ACL AUTH takes both)")
        return self


class EveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    file: FileSinkConfig | None = None
    syslog: SyslogSinkConfig | None = None
    redis: RedisSinkConfig | None = None
    stdout: bool = False


class MetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # host:port of the Prometheus endpoint ("[::1]:9477" for IPv6).
    listen: str = "127.0.0.1:9477"


# slowpath.nice's default: ahead of ordinary processes (0) without
# approaching the range administrators keep for the system's own (-20).
WORKER_NICE_DEFAULT = -10


class SlowpathConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Worker processes inspecting flows (each its own ring buffer, event
    # loop and heartbeat). None: one per CPU this process may use.
    workers: int | None = Field(None, ge=1, le=SLOWPATH_WORKERS_MAX)
    # The workers' scheduling priority (nice, absolute). A held request
    # waits for its worker and an async verdict cuts a flow only once
    # written, so a worker that has records runs ahead of ordinary
    # processes: measured in the lab (bench/slowpath.py, 2 CPUs shared with
    # client and server), the wait from a record to its worker running was
    # most of the verdict latency at nice 0. Below 0 needs CAP_SYS_NICE;
    # without it the workers run at the daemon's priority (logged).
    nice: int = Field(WORKER_NICE_DEFAULT, ge=-20, le=19)
    # The CPUs the workers run on (each on any of them; the daemon is not
    # pinned: appliance/priority.py says why), so forwarding and local
    # processes keep the others. A Linux cpulist ("1", "2-3,6") or a list of
    # numbers; each must be one this process may use (sched_getaffinity).
    # None: not pinned. With it, slowpath.workers defaults to the number of
    # these CPUs.
    cpus: tuple[int, ...] | None = None

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpus(cls, v):
        if v is None:
            return None
        cpus = parse_cpulist(v)
        check_usable(cpus)
        return cpus


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The network namespace of the interfaces (the daemon moves into it:
    # resets and the metrics endpoint live there too). None: this one.
    netns: str | None = None
    interfaces: list[str] = Field(min_length=1)
    policy: str | None = None
    rules: str | None = None
    datapath: DatapathConfig = DatapathConfig()
    slowpath: SlowpathConfig = SlowpathConfig()
    eve: EveConfig = EveConfig()
    metrics: MetricsConfig | None = MetricsConfig()
    # How often an EVE stats record is written and idle flows are closed.
    stats_interval_s: float = Field(30.0, gt=0)
    # How often expired sessions are deleted from the kernel's tables (the
    # fast path also expires them lazily when their flow comes back).
    sweep_interval_s: float = Field(10.0, gt=0)
