"""A C client built like upstream's (one send of the request line, a 512-byte receive
buffer, the tag checked at the end of each chunk) works against our etmemd."""
from __future__ import annotations

import shutil
import subprocess
import textwrap

import pytest

from etmemd_harness import Etmemd, install_probe_plugin, write_config

pytestmark = pytest.mark.usefixtures("need_root")

C_CLIENT = r"""
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* usage: cclient SOCKET_NAME REQUEST_LINE; prints the reply like upstream's client. */
int main(int argc, char **argv)
{
    struct sockaddr_un addr;
    struct timeval timeout = {10, 0};
    unsigned char buf[512];
    int fd, ok = 0, done = 0;

    if (argc != 3 || strlen(argv[1]) > 106 || strlen(argv[2]) > 512)
        return 2;
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path + 1, argv[1], strlen(argv[1]));      /* abstract: leading NUL */
    if (connect(fd, (struct sockaddr *)&addr,
                offsetof(struct sockaddr_un, sun_path) + 1 + strlen(argv[1])) < 0) {
        printf("connect failed: %s\n", strerror(errno));
        return 111;
    }
    if (send(fd, argv[2], strlen(argv[2]), 0) < 0)              /* one write, no newline */
        return 1;
    while (!done) {
        ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
        if (n <= 0) {
            printf("connection closed by peer\n");
            break;
        }
        buf[n] = '\0';
        if (buf[n - 1] == 0xff) {
            buf[n - 1] = '\0';
            ok = done = 1;
        } else if (buf[n - 1] == 0xfe) {
            buf[n - 1] = '\n';
            done = 1;
        }
        printf("%s", (char *)buf);
    }
    close(fd);
    if (!ok) {
        printf("etmem_client_recv failed.\n");
        return 186;
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def cclient(tmp_path_factory):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the upstream-style client")
    d = tmp_path_factory.mktemp("cclient")
    (d / "cclient.c").write_text(C_CLIENT)
    subprocess.run([compiler, "-O1", "-Wall", "-o", str(d / "cclient"), str(d / "cclient.c")], check=True)
    return str(d / "cclient")


def test_an_upstream_style_c_client_drives_etmemd(cclient, tmp_path):
    target = subprocess.Popen(["sleep", "3600"])
    d = Etmemd(tmp_path, plugin_dir=install_probe_plugin(tmp_path / "plugin")).start()
    try:
        tasks = "".join(textwrap.dedent(f"""
            [task]
            project=big
            engine=probe
            name=task_with_a_long_name_{i:02d}
            type=pid
            value={target.pid}
            """) for i in range(12))
        conf = write_config(tmp_path / "big.conf", "[project]\nname=big\nloop=1\ninterval=1\nsleep=1\n"
                            "[engine]\nname=probe\nproject=big\n" + tasks)

        def run(line: str) -> subprocess.CompletedProcess:
            return subprocess.run([cclient, d.name, line], capture_output=True, text=True, timeout=60)

        added = run(f"proj_name - file_name {conf} cmd 0 eng_name - eng_cmd - task_name -")
        assert (added.returncode, added.stdout) == (0, "")
        assert run("proj_name big file_name - cmd 2 eng_name - eng_cmd - task_name -").returncode == 0

        shown = run("proj_name - file_name - cmd 4 eng_name - eng_cmd - task_name -")
        assert shown.returncode == 0
        assert len(shown.stdout) > 1024, "the reply should span several 511-byte receives"
        assert shown.stdout.startswith("project: big\nnumber   type     value ")
        assert shown.stdout.count("task_with_a_long_name_") == 12

        hello = run("proj_name big file_name - cmd 5 eng_name probe eng_cmd hello task_name task_with_a_long_name_03")
        assert (hello.returncode, hello.stdout) == (0, "hello from probe task task_with_a_long_name_03\n")

        failed = run("proj_name nope file_name - cmd 2 eng_name - eng_cmd - task_name -")
        assert failed.returncode == 186
        # upstream's client prints a newline in place of the tag: one, as after upstream's replies
        assert failed.stdout == ("error: project is not exist\nproject nope does not exist (projects: big)\n"
                                 "etmem_client_recv failed.\n")
    finally:
        assert d.stop() == 0, d.log()
        target.kill()
        target.wait()
