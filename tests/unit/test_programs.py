"""Every program the project runs is in scripts/programs.txt, the one list the
install step reads: a program used but not listed works on a developer's
machine where it was installed by hand, and fails on a fresh one (issue 14:
etcdctl)."""

import subprocess
from collections import defaultdict

from tests.programs import (
    PROGRAM_LIST,
    REPO,
    all_uses,
    ansible_uses,
    listed,
    listed_programs,
    makefile_uses,
    python_uses,
    shell_commands,
)

GROUPS = {"all", "control", "compute", "etcd", "redis", "dashboard", "venv", "image", "test"}


def test_every_program_run_is_listed():
    unlisted: dict[str, list[str]] = defaultdict(list)
    for use in all_uses():
        if use.program not in listed_programs():
            unlisted[use.program].append(use.where)
    assert not unlisted, (
        f"programs run but not in {PROGRAM_LIST.relative_to(REPO)} (add each with its Debian "
        f"package): " + "; ".join(f"{p} at {', '.join(w)}" for p, w in sorted(unlisted.items())))


def test_every_listed_program_is_run_or_says_what_runs_it():
    """A stale entry installs a package for nothing: each is found in the code,
    or its comment says which other program runs it ("run by libvirtd")."""
    seen = {use.program for use in all_uses()}
    indirect = {line.split()[0] for line in PROGRAM_LIST.read_text().splitlines()
                if "# run by " in line and not line.startswith("#")}
    stale = listed_programs() - seen - indirect
    assert not stale, f"listed but never run (remove, or say '# run by ...'): {sorted(stale)}"


def test_list_is_well_formed():
    entries = listed()
    programs = [e.program for e in entries if e.program != "-"]
    assert len(programs) == len(set(programs)), "a program is listed twice"
    for entry in entries:
        assert set(entry.groups) <= GROUPS, f"{entry}: unknown group"
        assert entry.package and entry.package != "-", entry


def test_install_script_installs_exactly_the_list():
    """install-deps.sh reads the list (it names no package of its own)."""
    printed = subprocess.run([str(REPO / "scripts/install-deps.sh"), "--list"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert printed == sorted({e.package for e in listed() if e.package != "project"})
    image_only = subprocess.run([str(REPO / "scripts/install-deps.sh"), "--groups", "image", "--list"],
                                capture_output=True, text=True, check=True).stdout.split()
    assert "busybox-static" in image_only and "chromium" not in image_only and "bash" in image_only


def test_ansible_roles_install_their_share_of_the_list():
    import importlib.util

    spec = importlib.util.spec_from_file_location("programs_filter",
                                                  REPO / "ansible/filter_plugins/programs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    compute = module.program_packages(PROGRAM_LIST.read_text(), "compute")
    assert {"libvirt-daemon-system", "qemu-system-x86", "qemu-utils"} <= set(compute)
    assert "etcd-server" not in compute and "chromium" not in compute
    for role in ("compute", "control", "etcd", "redis", "dashboard"):
        tasks = (REPO / f"ansible/roles/{role}/tasks/main.yml").read_text()
        assert f"program_packages('{role}'" in tasks, f"the {role} role installs its own package list"


# The scanner itself: each kind of source it reads, with a program it must find.

def test_scanner_finds_programs_in_python(tmp_path):
    source = tmp_path / "x.py"
    source.write_text(
        "import subprocess, shutil\n"
        "def argv():\n    return ['etcd', '--name', 'x']\n"
        "subprocess.run(['etcdctl', 'get'])\n"
        "command = ['prlimit', '--as=1', 'qemu-img']\n"
        "subprocess.run([*command, 'info'])\n"
        "subprocess.Popen(argv())\n"
        "shutil.which('ip')\n"
        "procs.start('redis', ['redis-server', 'conf'])\n"
        "CHROMIUM = '/usr/bin/chromium'\n"
        # a name built from itself: the scan once recursed until RecursionError
        "probe = ['ping', '-c1']\n"
        "probe = [*probe, '-W1']\n"
        "subprocess.run(probe)\n")
    import tests.programs as programs

    original = programs.REPO
    programs.REPO = tmp_path
    try:
        found = {use.program for use in python_uses(source)}
    finally:
        programs.REPO = original
    assert found == {"etcd", "etcdctl", "prlimit", "ip", "redis-server", "chromium",
                     "ping"}


def test_scanner_finds_programs_in_shell():
    script = (
        'set -euo pipefail\n'
        'X=$(basename "$0")\n'
        'need() { echo "$1"; }\n'
        'need mkfs.ext4\n'
        'if [ "$(id -u)" = 0 ]; then mknod -m 600 x c 5 1; fi\n'
        'for f in a b; do cp "$f" /tmp; done\n'
        'case "$x" in\n  a) sort -u < f ;;\nesac\n'
        'cat > f << EOF\ninsmod virtio\nEOF\n'
        'echo "not (a program)"\n'
        'qemu-img create \\\n  -f qcow2 d 1G\n')
    found = {use.program for use in shell_commands(script, "x.sh")}
    assert found == {"basename", "id", "mknod", "cp", "sort", "cat", "qemu-img"}


def test_scanner_finds_programs_in_ansible_and_make(tmp_path):
    import tests.programs as programs

    role = tmp_path / "main.yml"
    role.write_text(
        "- ansible.builtin.command: virsh -c qemu:///system version\n"
        "- ansible.builtin.command:\n    argv: [start-stop-daemon, --start]\n"
        "- ansible.builtin.command:\n    argv:\n      - tar\n      - --create\n"
        "- ansible.builtin.shell:\n    cmd: |\n      set -u\n      nets=$(virsh net-list) || exit 1\n"
        "      grep -q x <<< \"$nets\"\n    executable: /bin/bash\n"
        "- ansible.builtin.command:\n    argv: [\"{{ venv }}/bin/pip\", install]\n")
    makefile = tmp_path / "Makefile"
    makefile.write_text(".PHONY: a \\\n\tb\nb: c\n\t$(PY) -m x\n\t@mkdir -p d && touch $@\n")
    original = programs.REPO
    programs.REPO = tmp_path
    try:
        found = {use.program for use in ansible_uses(role)}
        made = {use.program for use in makefile_uses(makefile)}
    finally:
        programs.REPO = original
    assert found == {"virsh", "start-stop-daemon", "tar", "grep", "bash"}
    assert made == {"mkdir", "touch"}
