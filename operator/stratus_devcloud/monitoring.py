"""The all-in-one's Prometheus (Debian's `prometheus`), scraping the operator and every agent
with the chart's alert rules loaded, as a cluster's Prometheus would.

It reads the operator's /metrics as a Kubernetes client: with a token of the ServiceAccount
stratus-prometheus, bound to the chart's ClusterRole stratus-metrics-reader. It reads the
agents' with their metrics token (one for this cloud, never an agent's own token). Its
port is chosen at the first `up` and kept in STATE/prometheus/port.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from stratus_devcloud.controlplane import REPO_ROOT, ControlPlaneError, kept_port
from stratus_devcloud.processes import Daemon

RULES = REPO_ROOT / "charts" / "stratus" / "files" / "alerts.yaml"
ACCOUNT = "stratus-prometheus"
READER_ROLE = "stratus-metrics-reader"  # the chart's, for a release named stratus
SCRAPE_SECONDS = 5  # short: tests and a newcomer see series within seconds
READY_TIMEOUT_SECONDS = 60.0
DAEMON_NAME = "prometheus"


class LocalPrometheus:
    def __init__(self, state_dir: Path, run_dir: Path, log_dir: Path) -> None:
        self.dir = state_dir / "prometheus"
        self._run_dir, self._log_dir = run_dir, log_dir

    @property
    def port(self) -> int:
        return kept_port(self.dir / "port")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.dir / "prometheus.yml"

    @property
    def operator_token_file(self) -> Path:
        return self.dir / "operator-token"

    @property
    def agent_token_file(self) -> Path:
        """The agents' metrics token: made once, given to every agent of this cloud."""
        path = self.dir / "agent-token"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_secret(path, secrets.token_urlsafe(32))
        return path

    @property
    def daemon(self) -> Daemon:
        return Daemon(
            DAEMON_NAME,
            ("prometheus", f"--config.file={self.config_file}",
             f"--storage.tsdb.path={self.dir / 'data'}", "--storage.tsdb.retention.time=2d",
             f"--web.listen-address=127.0.0.1:{self.port}"),
            self._run_dir, self._log_dir,
        )  # fmt: skip

    def configure(
        self, operator: str, agents: list[tuple[str, str]], ca_file: Path, operator_token: str
    ) -> None:
        """Scrape `operator` (host:port) and `agents` ((node, host:port)), both over HTTPS
        verified against `ca_file`."""
        _write_secret(self.operator_token_file, operator_token)
        targets = self.dir / "agents.json"
        targets.write_text(json.dumps(
            [{"targets": [address], "labels": {"hypervisor": node}} for node, address in agents]
        ))  # fmt: skip
        tls = {"ca_file": str(ca_file)}
        config: dict[str, Any] = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s",
                       "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "stratus-operator", "scheme": "https", "tls_config": tls,
                 "authorization": {"credentials_file": str(self.operator_token_file)},
                 "static_configs": [{"targets": [operator]}]},
                {"job_name": "stratus-agent", "scheme": "https", "tls_config": tls,
                 "authorization": {"credentials_file": str(self.agent_token_file)},
                 "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "5s"}]},
            ],
        }  # fmt: skip
        # JSON is YAML: no YAML writer needed.
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")

    def up(self) -> None:
        self.daemon.start()
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5):
                    return
            except (urllib.error.URLError, OSError):
                pass
            if not self.daemon.running():
                raise ControlPlaneError(
                    f"prometheus exited; last lines of {self.daemon.log_file}:\n"
                    f"{self.daemon.log_tail()}"
                )
            time.sleep(0.2)
        raise ControlPlaneError(f"prometheus did not get ready; see {self.daemon.log_file}")


def _write_secret(path: Path, value: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(value + "\n")
