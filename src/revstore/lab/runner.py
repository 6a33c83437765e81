"""One lab run: configure, start writers (and chaos), watch, stop, read the final
state, check, summarise. The CLI drives it; tests may too.

    lab = Lab(LabConfig(db="sqlite:///lab.db", writers=8, duration=3))
    lab.start()
    while lab.running():
        time.sleep(0.2)
    result = lab.finish()
    assert result.ok, result.report.failed
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from revstore.errors import NotFound
from revstore.lab.chaos import (
    CHAOS,
    Chaos,
    ChaosEvent,
    ConnectionKiller,
    ServerRestarter,
    WorkerKiller,
    WorkerRestarter,
    chaos_backend,
)
from revstore.lab.checker import CheckReport, FinalState, RecordState, StreamState, check
from revstore.lab.client import Client
from revstore.lab.history import Counters, History, Op, ops_to_json
from revstore.lab.naive import STRATEGIES as NAIVE_STRATEGIES
from revstore.lab.servers import KINDS as SERVER_KINDS
from revstore.lab.servers import ServerError, ThrowawayServer, throwaway_server
from revstore.lab.stats import Series, Summary, series, summarize
from revstore.lab.targets import (
    HttpTarget,
    InProcessTarget,
    Plan,
    ProcessTarget,
    Target,
    TargetSpec,
    is_loopback,
)
from revstore.lab.workload import Workload, build_workload, seed_records

STRATEGIES = ("counter", "lock", "optimistic", *NAIVE_STRATEGIES)
FAMILIES = ("records", "streams")


class ConfigError(ValueError):
    """The options do not make a run (exit status 2)."""


@dataclass(slots=True)
class LabConfig:
    db: str | None = None
    url: str | None = None
    server: str | None = None
    """postgresql / mariadb: run against a throwaway server of the lab's own (a
    temporary folder, a free port), removed after the run; ``--chaos restart-db``
    restarts it."""
    strategy: str | None = None
    processes: int = 0
    """0: threads in this process; N: N worker processes with ``writers`` threads each."""
    writers: int = 8
    duration: float | None = 5.0
    ops: int | None = None
    keys: int = 1
    seed: int | None = None
    workload: tuple[str, ...] = FAMILIES
    mix: dict[str, int] | None = None
    batch: int = 3
    chaos: str | None = None
    chaos_interval: float = 1.0
    namespace: str = "revstore-lab"
    allow_remote: bool = False
    timeout: float = 10.0

    def validate(self) -> None:
        if self.server is not None:
            if self.server not in SERVER_KINDS:
                raise ConfigError(f"--server must be one of {', '.join(SERVER_KINDS)}")
            if self.db or self.url:
                raise ConfigError("--server starts the database to drive: give no --db or --url")
        elif not self.db and not self.url:
            raise ConfigError("give a target: --db URL (the library) or --url URL (the service)")
        if self.url:
            if not self.url.startswith(("http://", "https://")):
                raise ConfigError(f"--url must be an http(s) URL, got {self.url!r}")
            if not is_loopback(self.url) and not self.allow_remote:
                raise ConfigError(
                    f"{self.url} is not a loopback address: pass --allow-remote to drive a "
                    "remote service (the lab writes a lot)"
                )
            if self.strategy is not None:
                raise ConfigError("--strategy applies to --db targets; a service uses its own")
            if self.processes:
                raise ConfigError("--processes applies to --db targets; use --writers for HTTP")
        elif self.db and "://" not in self.db:
            raise ConfigError(f"--db must be a database URL like sqlite:///lab.db, got {self.db!r}")
        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}")
        if self.processes < 0 or self.writers < 1 or self.keys < 1 or self.batch < 1:
            raise ConfigError("--processes must be >= 0; --writers, --keys and --batch >= 1")
        if self.duration is not None and self.duration <= 0:
            raise ConfigError("--duration must be positive")
        if self.ops is not None and self.ops < 1:
            raise ConfigError("--ops must be 1 or more")
        if self.duration is None and self.ops is None:
            raise ConfigError("bound the run with --duration and/or --ops")
        unknown = set(self.workload) - set(FAMILIES)
        if unknown or not self.workload:
            raise ConfigError(f"--workload takes {', '.join(FAMILIES)} (comma-separated)")
        if self.chaos is not None:
            if self.chaos not in CHAOS:
                raise ConfigError(f"--chaos must be one of {', '.join(CHAOS)}")
            if (
                self.chaos == "kill-connections"
                and self.server is None
                and chaos_backend(self.db) is None
            ):
                raise ConfigError(
                    "--chaos kill-connections needs --db with a PostgreSQL or MariaDB/MySQL URL "
                    "(with --url, --db names the service's database)"
                )
            if self.chaos == "kill-workers" and not self.processes:
                raise ConfigError("--chaos kill-workers needs --processes N")
            if self.chaos == "restart-db" and self.server is None:
                if self.url or chaos_backend(self.db) is not None:
                    raise ConfigError(
                        "--chaos restart-db restarts a server the lab owns: use --server "
                        "postgresql or --server mariadb (a throwaway server) instead of "
                        "--db/--url"
                    )
                if not self.processes:
                    raise ConfigError(
                        "--chaos restart-db on SQLite restarts the processes that hold the "
                        "database: give --processes N"
                    )
            if self.chaos_interval <= 0:
                raise ConfigError("--chaos-interval must be positive")


@dataclass(slots=True)
class Progress:
    elapsed: float
    remaining: float | None
    counters: Counters
    rate: float
    retries: int
    chaos: int
    ops_target: int | None


@dataclass(slots=True)
class LabResult:
    config: LabConfig
    run_id: str
    seed: int
    target: str
    backend: str
    strategy: str
    started_at: str
    elapsed: float
    interrupted: bool
    workload: Workload
    ops: list[Op]
    final: FinalState
    report: CheckReport
    summary: Summary
    series: Series
    chaos: list[ChaosEvent] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def label(self) -> str:
        return self.strategy

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "ok": self.ok,
            "config": {**asdict(self.config), "seed": self.seed},
            "target": self.target,
            "backend": self.backend,
            "strategy": self.strategy,
            "started_at": self.started_at,
            "elapsed": round(self.elapsed, 3),
            "interrupted": self.interrupted,
            "workload": {
                "record_keys": list(self.workload.record_keys),
                "stream_keys": list(self.workload.stream_keys),
                "mix": dict(self.workload.mix),
                "batch_max": self.workload.batch_max,
            },
            "summary": self.summary.to_dict(),
            "checks": self.report.to_dict(),
            "series": self.series.to_dict(),
            "chaos": [e.to_dict() for e in self.chaos],
            "final_state": _final_json(self.final),
            "history": ops_to_json(self.ops),
        }


def _final_json(final: FinalState) -> dict[str, Any]:
    return {
        "records": {
            key: {
                "head": asdict(state.head) if state.head else None,
                "snapshots": [asdict(s) for s in state.snapshots],
            }
            for key, state in final.records.items()
        },
        "streams": {
            key: {"items": [asdict(i) for i in state.items]} for key, state in final.streams.items()
        },
        "unreadable": final.unreadable,
    }


def _retrying(fn: Any, attempts: int = 4) -> Any:
    """Final reads right after chaos may meet a dying pool connection: try again."""
    for attempt in range(attempts):
        try:
            return fn()
        except NotFound:
            raise
        except Exception:
            if attempt + 1 == attempts:
                raise
            time.sleep(0.5 * (attempt + 1))
    return None


def read_final_state(client: Client, workload: Workload) -> FinalState:
    final = FinalState()
    for key in workload.record_keys:
        try:
            try:
                head = _retrying(lambda k=key: client.get(k))
            except NotFound:
                head = None
            try:
                snaps = _retrying(lambda k=key: client.history(k))
            except NotFound:
                snaps = []
            final.records[key] = RecordState(head, snaps)
        except Exception as exc:
            final.unreadable[key] = f"{type(exc).__name__}: {exc}"[:300]
    for key in workload.stream_keys:
        try:
            try:
                items = _retrying(lambda k=key: client.read_all(k))
            except NotFound:
                items = []
            final.streams[key] = StreamState(items)
        except Exception as exc:
            final.unreadable[key] = f"{type(exc).__name__}: {exc}"[:300]
    return final


class Lab:
    def __init__(self, config: LabConfig) -> None:
        config.validate()
        self.config = config
        self.seed = config.seed if config.seed is not None else random.randrange(2**31)
        self.run_id = uuid.uuid4().hex[:8]
        self.history = History()
        self.interrupted = False
        self.server: ThrowawayServer | None = None
        self.db = config.db
        if config.server is not None:
            try:
                self.server = throwaway_server(config.server)
                self.server.start()
            except (ServerError, OSError, KeyError) as exc:
                if self.server is not None:
                    self.server.cleanup()
                raise ConfigError(
                    f"cannot start a throwaway {config.server} server: {exc}"
                ) from exc
            self.db = self.server.url
        try:
            self._open_target()
        except BaseException:
            self._close_server()
            raise
        if self.server is not None:
            self.target.description += (
                f" (throwaway {self.server.kind} server on 127.0.0.1:{self.server.port})"
            )
        self.chaos: Chaos | None = None
        self.t0 = 0.0
        self.t_end: float | None = None
        self.started_at = ""
        self.deadline: float | None = None

    def _open_target(self) -> None:
        config = self.config
        spec = TargetSpec(
            db=self.db,
            url=config.url,
            strategy=config.strategy,
            namespace=config.namespace,
            timeout=config.timeout,
        )
        self.spec = spec
        self.target: Target
        if config.url:
            self.target = HttpTarget(spec)
        elif config.processes:
            self.target = ProcessTarget(spec, config.processes)
        else:
            self.target = InProcessTarget(spec, config.writers)
        try:
            self.workload = build_workload(
                f"lab-{self.run_id}",
                config.keys,
                set(config.workload),
                config.mix,
                config.batch,
                unsupported=spec.unsupported,
            )
        except ValueError as exc:
            self.target.close()
            raise ConfigError(str(exc)) from exc

    def _close_server(self) -> None:
        if self.server is not None:
            self.server.cleanup()

    @property
    def writers_total(self) -> int:
        return self.config.writers * max(1, self.config.processes)

    def start(self) -> None:
        cfg = self.config
        plan = Plan(writers=cfg.writers, seed=self.seed, ops=cfg.ops)
        self.target.prepare(self.history, self.workload, plan)
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.t0 = time.monotonic()
        if self.workload.record_keys:
            seed_records(self.target.final_client(), self.history, self.workload, self.t0)
        self.deadline = None if cfg.duration is None else time.monotonic() + cfg.duration
        self.target.go(self.t0, self.deadline)
        rng = random.Random(f"{self.seed}:chaos")
        if cfg.chaos == "kill-connections":
            assert self.db is not None
            self.chaos = ConnectionKiller(self.db, cfg.chaos_interval, rng, self.t0)
        elif cfg.chaos == "kill-workers":
            assert isinstance(self.target, ProcessTarget)
            self.chaos = WorkerKiller(self.target, cfg.chaos_interval, rng, self.t0)
        elif cfg.chaos == "restart-db" and self.server is not None:
            self.chaos = ServerRestarter(self.server, cfg.chaos_interval, rng, self.t0)
        elif cfg.chaos == "restart-db":
            assert isinstance(self.target, ProcessTarget)  # SQLite: validated
            self.chaos = WorkerRestarter(self.target, cfg.chaos_interval, rng, self.t0)
        if self.chaos is not None:
            self.chaos.start()

    def running(self) -> bool:
        self.target.poll()
        past = self.deadline is not None and time.monotonic() >= self.deadline
        if self.chaos is not None and past:
            # Past the deadline writers are finishing: no new faults, no new workers.
            self.chaos.halt()
        return self.target.alive()

    def progress(self) -> Progress:
        self.target.poll()
        now = time.monotonic()
        remaining = None if self.deadline is None else max(0.0, self.deadline - now)
        return Progress(
            elapsed=now - self.t0,
            remaining=remaining,
            counters=self.history.snapshot(),
            rate=self.history.rate(),
            retries=self.target.retries(),
            chaos=self.chaos.hits if self.chaos else 0,
            ops_target=self.config.ops,
        )

    def stop(self) -> None:
        """Ask the writers to stop after their current op (Ctrl-C)."""
        self.interrupted = True
        self.target.stop()

    def finish(self) -> LabResult:
        if self.chaos is not None:
            self.chaos.halt()
        self.target.join(timeout=30.0)
        elapsed = time.monotonic() - self.t0
        ops = self.history.ops()
        last_end = max((op.end for op in ops if op.end is not None), default=elapsed)
        elapsed = min(elapsed, max(last_end, 1e-3))
        try:
            final = read_final_state(self.target.final_client(), self.workload)
            incidents = self.target.incidents()
            if not any(op.end is not None and op.client != "setup" for op in ops):
                incidents.append("no operation completed: the writers did not run")
            report = check(ops, final, incidents)
            summary = summarize(ops, elapsed, self.target.retries())
        finally:
            self.target.close()
            self._close_server()
        return LabResult(
            config=self.config,
            run_id=self.run_id,
            seed=self.seed,
            target=self.target.description,
            backend=self.target.backend,
            strategy=self.target.strategy,
            started_at=self.started_at,
            elapsed=elapsed,
            interrupted=self.interrupted,
            workload=self.workload,
            ops=ops,
            final=final,
            report=report,
            summary=summary,
            series=series(ops, elapsed),
            chaos=list(self.chaos.events) if self.chaos else [],
        )


def run(config: LabConfig, poll: float = 0.1) -> LabResult:
    """Run to the end without a display (tests, scripts). Ctrl-C stops it early."""
    lab = Lab(config)
    lab.start()
    try:
        while lab.running():
            time.sleep(poll)
    except KeyboardInterrupt:
        lab.stop()
    return lab.finish()
