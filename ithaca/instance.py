"""Instance: loads the config, sets up logging in Odyssey's log_format, writes the pid file,
starts the system and handles signals (SIGTERM/SIGINT stop, SIGHUP reload)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from .config import Config, ConfigError, load_config
from .system import System

log = logging.getLogger("ithaca")


_RECORD_FIELDS = {"u": "user", "d": "database", "h": "client_host", "r": "client_port"}


class OdysseyFormatter(logging.Formatter):
    """Renders Odyssey's log_format escapes: %p pid, %t time, %n unix time, %l level,
    %i client id, %s server id, %u user, %d database, %h client host, %r client port,
    %c context (logger), %m and %M message, %% percent. Fields a record lacks print "none"."""

    _LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warning", "ERROR": "error",
               "CRITICAL": "fatal"}

    def __init__(self, log_format: str) -> None:
        super().__init__()
        self.log_format = log_format.rstrip("\n")
        self.pid = str(os.getpid())

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        out = []
        fmt = self.log_format
        i = 0
        while i < len(fmt):
            ch = fmt[i]
            if ch != "%" or i + 1 == len(fmt):
                out.append(ch)
                i += 1
                continue
            code = fmt[i + 1]
            i += 2
            if code == "p":
                out.append(self.pid)
            elif code == "t":
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
                out.append(f"{stamp}.{int(record.msecs):03d}")
            elif code == "l":
                out.append(self._LEVELS.get(record.levelname, record.levelname.lower()))
            elif code == "i":
                out.append(getattr(record, "client_id", "none"))
            elif code == "s":
                out.append(getattr(record, "server_id", "none"))
            elif code == "n":
                out.append(str(int(record.created)))
            elif code in "udhr":
                out.append(str(getattr(record, _RECORD_FIELDS[code], "none")))
            elif code == "c":
                out.append(record.name.removeprefix("ithaca.") or "ithaca")
            elif code in "mM":
                out.append(message)
            elif code == "%":
                out.append("%")
            else:
                out.append("%" + code)
        return "".join(out)


def setup_logging(config: Config) -> None:
    root = logging.getLogger("ithaca")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = OdysseyFormatter(config.log_format)
    if config.log_to_stdout:
        handler: logging.Handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    if config.log_file:
        file_handler = logging.FileHandler(config.log_file)
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    root.setLevel(logging.DEBUG if config.log_debug else logging.INFO)
    root.propagate = False


class Instance:
    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self.system: System | None = None
        self._stop = asyncio.Event()
        self._sigterms = 0
        self._sigints = 0

    async def run(self) -> int:
        config = self.config
        setup_logging(config)
        for warning in config.warnings:
            log.warning("%s", warning)
        if config.workers not in (1,):
            log.warning("workers %s: ithaca runs all clients in one process for now",
                        config.workers or "auto")
        log.info("ithaca %s starting (pid %d) with %s", _version(), os.getpid(), self.config_path)
        if config.log_config:
            for line in describe_config(config):
                log.info("config: %s", line)
        system = System(config)
        self.system = system
        try:
            await system.start()
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            system.close()
            return 1
        self._write_pid_file()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_log)
        try:
            await self._stop.wait()
            await system.shutdown(self.config.graceful_shutdown_timeout_ms / 1000)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
            self._remove_pid_file()
        log.info("ithaca stopped")
        return 0

    def _on_stop_signal(self, sig: int) -> None:
        if sig == signal.SIGINT:
            self._sigints += 1
        else:
            self._sigterms += 1
        if self._sigints >= 2 or (self._sigints and self._sigterms) or (
                self._sigterms >= max(2, self.config.max_sigterms_to_die)):
            log.warning("%s again: exiting now", signal.Signals(sig).name)
            self._remove_pid_file()
            os._exit(1)
        if self._stop.is_set():
            log.info("%s received: still shutting down (%d of max_sigterms_to_die %d)",
                     signal.Signals(sig).name, self._sigterms, self.config.max_sigterms_to_die)
            return
        log.info("%s received: shutting down gracefully (up to %d ms; a second SIGINT, or "
                 "SIGTERM number %d, exits now)", signal.Signals(sig).name,
                 self.config.graceful_shutdown_timeout_ms, max(2, self.config.max_sigterms_to_die))
        self._stop.set()

    def reload(self) -> bool:
        """Read the config file again and apply it; keep the running one if it is invalid."""
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload failed, the running config stays in effect:\n%s", exc)
            return False
        self.config = new
        setup_logging(new)
        for warning in new.warnings:
            log.warning("%s", warning)
        assert self.system is not None
        report = self.system.reload(new)
        if report:
            log.info("reloaded %s: %s", self.config_path, "; ".join(report))
        else:
            log.info("reloaded %s: no changes", self.config_path)
        return True

    def _reopen_log(self) -> None:
        setup_logging(self.config)
        log.info("log file reopened")

    def _write_pid_file(self) -> None:
        if self.config.pid_file:
            with open(self.config.pid_file, "w") as handle:
                handle.write(f"{os.getpid()}\n")

    def _remove_pid_file(self) -> None:
        if self.config.pid_file:
            try:
                os.unlink(self.config.pid_file)
            except FileNotFoundError:
                pass


def describe_config(config: Config) -> list[str]:
    """The config as log_config prints it: listens, storages and rules, secrets left out."""
    lines = [f"workers {config.workers}, client_max {config.client_max}, "
             f"graceful_shutdown_timeout_ms {config.graceful_shutdown_timeout_ms}"]
    for listen in config.listens:
        lines.append(f"listen {listen.host or 'unix'}:{listen.port} tls {listen.tls} "
                     f"client_login_timeout {listen.client_login_timeout} ms")
    for storage in config.storages.values():
        lines.append(f"storage {storage.name!r}: {storage.type} "
                     f"{storage.host or ''}:{storage.port} tls {storage.tls}")
    for rule in config.rules:
        lines.append(
            f"rule {rule.database or 'default'}.{rule.user or 'default'} ({rule.location}): "
            f"auth {rule.authentication}, storage {rule.storage.name!r}, pool {rule.pool}, "
            f"pool_size {rule.pool_size}, pool_timeout {rule.pool_timeout} ms, "
            f"pool_ttl {rule.pool_ttl} s, client_max {rule.client_max}, "
            f"prepared statements {'yes' if rule.pool_reserve_prepared_statement else 'no'}")
    return lines


def _version() -> str:
    from . import __version__

    return __version__
