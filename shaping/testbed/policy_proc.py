"""A scripted policy that lives in its own process, so the testbed can kill (SIGKILL) or stall (SIGSTOP) it.

The child (a standard-library-only `python -c` program) answers one JSON line per request with the
fraction of the bottleneck share to set the tenant's HTB root to; the parent turns it into the
testbed's shaped plan. A dead child makes ``decide`` raise, a stopped one makes it block: the
control loop's deadline and watchdog must then fall back to the static rules.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from shaping.control.backend import Observed
from shaping.control.policy import Decision
from shaping.spec import ActionLayout, TenantSpec
from shaping.testbed.scenario import shaped_plan

#: Root rate of the scripted policy, as a fraction of the tenant's bottleneck share.
ROOT_FRACTION = 0.93
#: Longest wait for one answer, seconds (the control loop's deadline is much shorter).
ANSWER_TIMEOUT_S = 30.0
_REPO = str(Path(__file__).resolve().parents[2])


class PolicyProcess:
    """A ControlPolicy whose decisions come from a child process.

    Args:
        spec: the tenant.
        python: interpreter of the child.
    """

    def __init__(self, spec: TenantSpec, python: str = sys.executable) -> None:
        self.spec = spec
        self.layout = ActionLayout(spec)
        env = {**os.environ, "PYTHONPATH": _REPO}
        self.proc = subprocess.Popen(
            [python, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=_REPO
        )
        # Wait until the child runs, so its interpreter start does not count as a stalled first call.
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], ANSWER_TIMEOUT_S)
        if not ready or self.proc.stdout.readline().strip() != "READY":
            self.close()
            raise RuntimeError("the policy process did not start")

    @property
    def name(self) -> str:
        """Name in logs and metrics."""
        return f"scripted-process:{self.proc.pid}"

    def decide(self, observed: Observed) -> Decision:
        """Ask the child; raises when it is gone, blocks (up to ANSWER_TIMEOUT_S) while it is stopped."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"obs_dim": int(observed.obs.numel())}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise RuntimeError(f"policy process {self.proc.pid} is gone: {err}") from None
        ready, _, _ = select.select([self.proc.stdout], [], [], ANSWER_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"policy process {self.proc.pid} did not answer (exit {self.proc.poll()})")
        plan = shaped_plan(self.spec, float(json.loads(line)["root_frac"]))
        return Decision(plan, self.layout.encode(plan))

    def kill(self) -> None:
        """SIGKILL the child (a crashed policy)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10.0)

    def stall(self) -> None:
        """SIGSTOP the child (a hung policy)."""
        self.proc.send_signal(signal.SIGSTOP)

    def close(self) -> None:
        """End the child whatever its state."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10.0)


#: The child: standard library only (starts in tens of milliseconds); one answer per request line.
_CHILD = f"""
import json, sys
print("READY", flush=True)
for line in sys.stdin:
    if line.strip():
        print(json.dumps({{"root_frac": {ROOT_FRACTION}}}), flush=True)
"""
