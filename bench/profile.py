"""Optional sampling profiles of the services with py-spy (`pip install py-spy`), summarised as top frames.

`python -m bench.run --profile DIR` records each adapter process during the end-to-end run at the highest
concurrency (`py-spy record --gil --nonblocking --format raw`: samples of the thread holding the GIL, i.e. Python
CPU time) and writes DIR/<process>.raw (collapsed stacks) and DIR/<process>.top.txt.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

#: frames every stack shares (the interpreter, typer, asyncio's runner): they say nothing
_BORING = ("typer/", "_click/", "asyncio/runners.py", "esi:", "threading.py", "<module>", "esi/cli/")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Profiles:
    def __init__(self, directory: Path, pids: dict[str, int], seconds: float, rate: int = 100) -> None:
        self.directory = directory
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        directory.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            raw = directory / f"{name}.raw"
            self.procs[name] = (
                subprocess.Popen(
                    [
                        exe,
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(int(seconds)),
                        "--rate",
                        str(rate),
                        "--gil",
                        "--nonblocking",
                        "--format",
                        "raw",
                        "-o",
                        str(raw),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                ),
                raw,
            )

    def finish(self, top: int = 15) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (proc, raw) in self.procs.items():
            try:
                _, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                out[name] = {"error": "py-spy did not finish"}
                continue
            if proc.returncode != 0 or not raw.exists():
                out[name] = {"error": f"py-spy exited with {proc.returncode}: {err.decode(errors='replace')[-300:]}"}
                continue
            summary = summarise(raw, top)
            out[name] = {"raw": str(raw), **summary}
            lines = [f"{name}: {summary['samples']} samples (GIL held)", "", "self:"]
            lines += [f"  {e['pct']:5.1f}%  {e['frame']}" for e in summary["self"]]
            lines += ["", "inclusive:"] + [f"  {e['pct']:5.1f}%  {e['frame']}" for e in summary["inclusive"]]
            (self.directory / f"{name}.top.txt").write_text("\n".join(lines) + "\n")
        return out


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    """Top frames by self and inclusive samples, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            if not any(b in frame for b in _BORING):
                incl[frame] += n

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"pct": round(100 * c / total, 1), "frame": f} for f, c in counter.most_common(top)] if total else []

    return {"samples": total, "self": table(own), "inclusive": table(incl)}
