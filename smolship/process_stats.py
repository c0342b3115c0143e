"""Facts about this process that several layers record (targets: export peak; validation: runtime peak)."""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak RSS since its exec (/proc VmHWM). ru_maxrss is not: Linux carries the parent's
    high-water mark across fork+exec, so a worker spawned by a 4 GB export would report 4 GB."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:  # not Linux: ru_maxrss is bytes on macOS, kB elsewhere
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
