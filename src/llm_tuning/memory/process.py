"""Process clocks and memory high-water marks (Linux /proc), for the figures a run reports."""

from __future__ import annotations

import os


def seconds_since_process_start() -> float | None:
    """From /proc (Linux): uptime minus the process's start time. None where unavailable."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mib() -> float:
    """The process's RSS high-water mark (VmHWM on Linux, else ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss_mib() -> float:
    """Restart the high-water mark at the current RSS, so a later peak measures this phase alone (an import
    spike before the model load would otherwise hide it); returns that RSS. Where the kernel does not allow the
    reset, the high-water mark so far is returned and the difference is a lower bound."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return peak_rss_mib()
