"""What the command-line tools share: environment description, argument parsing of comma lists,
a progress bar, Markdown tables and JSON output."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from typing import Iterable, Sequence

import torch

try:  # tqdm is a dependency; without it (e.g. a machine installed with --no-deps) no bar
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # The vector ISA torch detects (AVX2, AVX512, ...); fusedrnn's kernels pick their own form from
    # CPUID (and FUSEDRNN_DISABLE_AVX512), which agrees on common CPUs.
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{cpu} ({torch.get_num_threads()} threads, {isa})"


def environment(device: str) -> dict:
    env = {
        "date": datetime.date.today().isoformat(),
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def banner(title: str, device: str) -> str:
    env = environment(device)
    return (f"{title} | {env['date']} | torch {env['torch']} | device {device}: "
            f"{env['device_name']}")


def parse_choices(text: str, allowed: Iterable[str], what: str) -> list[str]:
    """'a,b' -> ['a', 'b'], each checked against allowed (SystemExit with the choices if not)."""
    allowed = list(allowed)
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise SystemExit(f"unknown {what}: {', '.join(bad) or '(none given)'}; "
                         f"choose from {', '.join(allowed)}")
    return items


def progress(items: Sequence, desc: str):
    """Iterates items with a progress bar on stderr when tqdm is installed."""
    if tqdm is None:
        return items
    return tqdm(items, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(c)
              for i, c in enumerate(columns)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    print(f"wrote {path}")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend; SystemExit saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib "
                         "(or pip install -e '.[plot]')") from None
    return plt
