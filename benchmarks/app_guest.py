"""Run the Redis benchmark (bench_apps.py) inside a QEMU guest on a kernel of our choice, and bring its JSON lines back.

The contenders that need DAMON, idle page tracking or a memory cgroup of their own cannot
run on the build hosts (their DAMON and cgroups are the machine's), so the benchmark boots
a virtme-ng guest under TCG as tests/vm_harness.py does (the host's root filesystem read-only
over 9p, the host's Python and PYTHONPATH) on either the project's test kernel (idle page
tracking, DAMON, PSI) or Debian's stock 6.12 (DAMON, PSI, MGLRU, no idle page tracking),
and runs `bench_apps.py --in-guest` there. The results come back through a writable
folder of the host's (--rwdir); the guest's progress lines are passed on as they come.

    python benchmarks/app_guest.py [--kernel test|debian|both] [--timeout 3600] [-- bench_apps options]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from vm_harness import (ROOT_FS, TEST_KERNEL, TLB_TURNOVER, VmUnavailable, check_tools,  # noqa: E402
                        kernel_cache, unpacked_config)

import app_contenders  # noqa: E402

# Room for the data set twice over (the server, and the fill server's copy while it saves
# the RDB), the guest's page cache of the RDB and the benchmark's Python processes.
GUEST_SHAPE = ["--memory", "3G", "--cpus", "2"]
PROGRESS_PREFIX = "bench_apps:"


class GuestFailed(Exception):
    """The guest did not boot, or the benchmark in it wrote no results."""


def guest_kernel(which: str) -> Path:
    """The kernel image for `which`: "test" (the project's test kernel) or "debian" (Debian's stock 6.12)."""
    if which == "test":
        for candidate in [ROOT.parent / "shared" / "testvm" / TEST_KERNEL, *sorted(kernel_cache().glob("bzImage-6.12*-etmem"))]:
            if candidate.is_file():
                return candidate
        raise VmUnavailable(f"no test kernel: neither {ROOT.parent / 'shared' / 'testvm' / TEST_KERNEL} nor a "
                            f"bzImage-6.12*-etmem in {kernel_cache()} (testvm/build-kernel builds one)")
    if which == "debian":
        found = sorted(kernel_cache().glob("debian-6.12*/boot/vmlinuz-6.12*"))
        if found:
            return found[-1]
        # unpacked, not installed: the script puts it into the cache and prints its path
        done = subprocess.run([str(ROOT / "testvm" / "fetch-debian-kernel")], capture_output=True, text=True)
        if done.returncode != 0:
            raise VmUnavailable(f"testvm/fetch-debian-kernel failed: {done.stderr.strip()[-500:]}")
        return Path(done.stdout.strip().splitlines()[-1])
    raise ValueError(f"unknown guest kernel {which!r}: test or debian")


def guest_script(rwdir: str, results: str, args: list[str], config: Path | None) -> str:
    """The shell script the guest runs: set-up, then bench_apps.py --in-guest writing into rwdir."""
    env = {"PYTHONDONTWRITEBYTECODE": "1", "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    # the guest sees only the installed etmem unless told where a checkout's src/ is
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    bench = [sys.executable, str(ROOT / "benchmarks" / "bench_apps.py"), "--in-guest", "--out", results, *args]
    return "".join([
        f"cd {shlex.quote(str(ROOT))} || exit 125\n",
        *(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()),
        "echo \"bench_apps: guest up after $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)\"\n",
        # zram is a module in Debian's kernel (built into the test kernel)
        "modprobe -q zram 2>/dev/null\n",
        # every contender swaps to the benchmark's zram device, on both kernels: the test
        # kernel turns zswap on by default (Debian's does not), and zswap's pool is charged
        # to the cgroup, so pages of these barely compressible values would stay charged
        # and hold a server under memory.high in its reclaim
        "[ -w /sys/module/zswap/parameters/enabled ] && echo N > /sys/module/zswap/parameters/enabled\n",
        # damo reads DAMON's trace events at start-up; the kernels that have tracefs may not mount it
        "grep -qw tracefs /proc/filesystems && ! grep -qw tracefs /proc/self/mounts && "
        "mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null\n",
        # an unpacked distribution kernel's config, where etmem.kernel reads it (DAMON's operations)
        f"cp {shlex.quote(str(config))} /boot/\n" if config else "",
        shlex.join(bench) + "\n",
        f"rc=$?\ndmesg > {shlex.quote(rwdir)}/dmesg.txt 2>&1\nexit $rc\n",
    ])


GUEST_UP = "bench_apps: guest up"


def run_in_guest(kernel_image: Path, args: list[str], timeout: float, progress=None) -> list[dict]:
    """Boot a guest on kernel_image, run `bench_apps.py --in-guest ARGS` there, return its JSON lines.

    `progress(text)` gets the guest's progress lines as they come (default: stderr, with the
    minutes since boot). The guest is killed after `timeout` seconds (boot included); what it
    wrote by then is returned. A guest that never reached its command (a TCG boot can oops:
    seen once in 6.12's early boot) is booted once more. Raises GuestFailed when the guest
    wrote nothing.
    """
    vng, _ = check_tools()
    # installed on the host: in the guest the cache is read-only
    app_contenders.install_damo()
    workdir = tempfile.mkdtemp(prefix="etmem-app-guest-")
    results = os.path.join(workdir, "results.jsonl")
    config = unpacked_config(kernel_image)
    script = os.path.join(workdir, "run.sh")
    with open(script, "w") as f:
        f.write(guest_script(workdir, results, args, config))
    # --verbose: the guest's console (where the progress lines are) reaches vng's stdout
    # through the serial console; without it this machine's vng lost the command's output.
    cmd = [vng, "--verbose", "--run", str(kernel_image), "--disable-kvm", "--user", "root", *GUEST_SHAPE,
           *ROOT_FS, *TLB_TURNOVER, f"--rwdir={workdir}", "--cwd", str(ROOT),
           *(["--overlay-rwdir=/boot"] if config else []), "--exec", f"sh {shlex.quote(script)}"]
    began = time.monotonic()

    def say(text: str) -> None:
        if progress is not None:
            progress(text)
        else:
            print(f"app_guest [{kernel_image.name} {(time.monotonic() - began) / 60:.1f} min] {text}",
                  file=sys.stderr, flush=True)

    for attempt in (1, 2):
        console = os.path.join(workdir, f"console{attempt}.txt")
        say(f"booting ({shlex.join(GUEST_SHAPE)}, TCG); console in {console}")
        status, came_up = _boot(cmd, console, timeout - (time.monotonic() - began), say)
        if came_up or os.path.exists(results):
            break
        say(f"the guest did not reach its command (vng exit status {status})")
    lines = []
    if os.path.exists(results):
        with open(results) as f:
            lines = [json.loads(line) for line in f if line.strip()]
    if not lines:
        raise GuestFailed(f"the guest on {kernel_image} wrote no results (vng exit status {status}); "
                          f"console and dmesg kept in {workdir}")
    # kept: vng's exit status does not tell how the guest's command ended, the console does
    say(f"done: {len(lines)} lines; console and dmesg in {workdir}")
    return lines


def _boot(cmd: list[str], console: str, timeout: float, say) -> tuple[int | None, bool]:
    """Run vng once: (its exit status, None when killed at the timeout; whether the guest reached its command)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    came_up = threading.Event()

    def copy_console() -> None:
        with open(console, "wb") as log:
            for line in iter(proc.stdout.readline, b""):
                log.write(line)
                log.flush()
                text = line.decode(errors="replace").strip()
                at = text.find(PROGRESS_PREFIX)
                if at >= 0:
                    if text.startswith(GUEST_UP, at):
                        came_up.set()
                    say(text[at + len(PROGRESS_PREFIX):].strip())

    reader = threading.Thread(target=copy_console, daemon=True)
    reader.start()
    try:
        status = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        status = None
        say(f"killed at the timeout ({timeout:.0f} s left for this boot)")
    finally:
        if proc.poll() is None:   # our own vng session (Ctrl-C, the timeout): vng and its QEMU
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    return status, came_up.is_set()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", choices=("test", "debian", "both"), default="both")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per guest, boot included (default 3600)")
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench_apps.py's options")
    options = p.parse_args(argv)
    args = options.bench_args[1:] if options.bench_args[:1] == ["--"] else options.bench_args

    def on_signal(signum, _frame):   # so that the guest's QEMU is killed on the way out
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    status = 0
    for which in (("test", "debian") if options.kernel == "both" else (options.kernel,)):
        try:
            lines = run_in_guest(guest_kernel(which), args, options.timeout)
        except (VmUnavailable, GuestFailed) as exc:
            print(f"app_guest: {exc}", file=sys.stderr)
            status = 1
            continue
        with open(options.out, "a") if options.out else open(os.devnull, "w") as out:
            for line in lines:
                text = json.dumps(line)
                print(text, flush=True)
                out.write(text + "\n")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("app_guest: interrupted; the guest is stopped", file=sys.stderr)
        sys.exit(130)
