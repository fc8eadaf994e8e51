"""The programs the project and its tests run, as `scripts/programs.txt` lists
them (the one list `scripts/install-deps.sh` installs from), and a scanner that
finds every program the code actually runs: Python (subprocess and friends),
shell scripts and the Ansible roles. tests/unit/test_programs.py compares the
two; tests/conftest.py checks at run time what the test process really ran."""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROGRAM_LIST = REPO / "scripts" / "programs.txt"

# Where programs are run from. images/rootfs is left out: it runs inside the
# guest, on the guest's busybox, not on the host.
PYTHON_DIRS = ("control", "client", "compute-agent", "dashboard", "localcloud", "tests", "bench", "examples",
               "docs", "scripts", "ansible")
SHELL_FILES = ("scripts/*.sh", "images/*.sh", ".ci/run")
ANSIBLE_FILES = ("ansible/**/*.yml", "ansible/**/*.j2")

# Calls that start a program; their list (or, for `which`, string) arguments
# name it. `start` is localcloud's ProcessSet.start(name, argv).
PROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output", "getoutput",
                 "create_subprocess_exec", "execv", "execvp", "execvpe", "execl", "execlp",
                 "spawnv", "spawnvp", "posix_spawn", "posix_spawnp", "which", "start"}
# A string that is the absolute path of a program (executable_path="/usr/bin/chromium").
PROGRAM_PATH = re.compile(r"^/(?:usr/(?:local/)?)?s?bin/([A-Za-z0-9][\w.+-]*)$")
PROGRAM_NAME = re.compile(r"^[A-Za-z0-9][\w.+-]*$")


@dataclass(frozen=True)
class Use:
    program: str
    where: str  # path:line


@dataclass(frozen=True)
class Listed:
    program: str  # "-" for a package needed for itself (headers, a file copied)
    package: str
    groups: tuple[str, ...]


def listed() -> list[Listed]:
    """scripts/programs.txt: `program package groups` per line, # comments."""
    entries = []
    for line in PROGRAM_LIST.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            program, package, groups = fields
            entries.append(Listed(program, package, tuple(groups.split(","))))
    return entries


def listed_programs() -> set[str]:
    return {entry.program for entry in listed() if entry.program != "-"}


def program_of(word: str) -> str | None:
    """The program a command word names: its basename, or None for a word that
    is not a literal program (a variable, a template, the Python running us)."""
    if not word or any(c in word for c in "$`{}*?\"'"):
        return None
    if word.startswith("/"):
        match = PROGRAM_PATH.match(word)
        return match.group(1) if match else None
    return word if PROGRAM_NAME.match(word) and "/" not in word else None


# --- Python -------------------------------------------------------------------

def _first_string(node: ast.AST, scope: dict[str, list[ast.AST]],
                  seen: frozenset[str] = frozenset()) -> list[str]:
    """The literal first words of an argv expression, following names assigned
    in the same scope, `[*command, ...]` and calls to functions returning a list.
    `seen` holds the names being followed, so `command = [*command, "-v"]`
    does not send the scan round in a circle."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value.split()[0]] if node.value.split() else []
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        first = node.elts[0]
        if isinstance(first, ast.Starred):
            return _first_string(first.value, scope, seen)
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return [first.value]
        return []
    if isinstance(node, ast.Name):
        key = node.id
    elif isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        key = f"return:{name}"
    else:
        return []
    if key in seen:
        return []
    return [w for value in scope.get(key, []) for w in _first_string(value, scope, seen | {key})]


def _scope_of(tree: ast.AST) -> dict[str, list[ast.AST]]:
    """Names bound to a value anywhere in a module (coarse, but argv variables
    are short-lived and uniquely named), and what each function returns."""
    scope: dict[str, list[ast.AST]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    scope.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            scope.setdefault(node.target.id, []).append(node.value)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return) and inner.value is not None:
                    scope.setdefault(f"return:{node.name}", []).append(inner.value)
    return scope


def python_uses(path: Path) -> Iterator[Use]:
    tree = ast.parse(path.read_text(), str(path))
    scope = _scope_of(tree)
    where = path.relative_to(REPO)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in PROCESS_CALLS:
                for arg in node.args:
                    if name != "which" and isinstance(arg, ast.Constant):
                        continue  # start("etcd", argv): the first is a label
                    for word in _first_string(arg, scope):
                        if (program := program_of(word)) is not None:
                            yield Use(program, f"{where}:{node.lineno}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if (match := PROGRAM_PATH.match(node.value)) is not None:
                yield Use(match.group(1), f"{where}:{node.lineno}")


# --- shell --------------------------------------------------------------------

SHELL_WORDS = {
    # keywords and builtins: not programs
    "if", "then", "elif", "else", "fi", "for", "in", "do", "done", "while", "until", "case", "esac",
    "function", "select", "time", "!", "[", "[[", "]]", "test", "echo", "printf", "read", "local",
    "export", "declare", "readonly", "set", "unset", "shift", "return", "exit", "exec", "eval",
    "source", ".", "cd", "pwd", "trap", "wait", "command", "type", "hash", "true", "false", ":",
    "break", "continue", "umask", "ulimit", "mapfile", "readarray", "let", "shopt", "builtin",
}
_SEPARATORS = re.compile(r"\$\(|`|&&|\|\||[;|(){}]|<<<|\bthen\b|\bdo\b|\belse\b")


def _unquote(line: str) -> str:
    """A line with quoted text and expansions dropped; command substitutions
    (which run programs, quoted or not) are kept as commands of their own."""
    line = re.sub(r"\$\(\(.*?\)\)", "0", line)  # $((arithmetic))
    line = re.sub(r"\{\{.*?\}\}", "Q", line)  # Jinja, in the Ansible roles
    line = re.sub(r"\$\{[^}]*\}", "V", line)  # ${parameter}
    substituted = re.findall(r"\$\(([^()]*)\)", re.sub(r"'[^']*'", "Q", line))
    line = re.sub(r"\w+\+?=\([^)]*\)", "", line)  # array assignment: a=(x y)
    line = re.sub(r"'[^']*'", "Q", line)
    line = re.sub(r'"(?:[^"\\]|\\.)*"', "Q", line)
    return " ; ".join([line, *substituted])


def _logical_lines(text: str, first_line: int) -> Iterator[tuple[int, str]]:
    """Lines with backslash continuations joined, each with its first line's number."""
    start, parts = first_line, []
    for number, line in enumerate(text.splitlines(), first_line):
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        yield start, " ".join([*parts, line])
        parts = []
    if parts:
        yield start, " ".join(parts)


def shell_commands(text: str, origin: str, first_line: int = 1) -> Iterator[Use]:
    """The first word of every command in a shell script (a scan, not a parser:
    enough for scripts written to be read). Here-documents are data (the guest
    image's scripts, run by the guest's busybox) and are skipped."""
    functions = set(re.findall(r"^\s*(?:function\s+)?([\w-]+)\s*\(\)", text, re.M))
    in_case = False
    heredoc_end = None
    for number, raw in _logical_lines(text, first_line):
        if heredoc_end is not None:
            if raw.strip() == heredoc_end:
                heredoc_end = None
            continue
        if match := re.search(r"<<-?\s*['\"]?(\w+)['\"]?", raw):
            heredoc_end = match.group(1)
        line = re.sub(r"(^|\s)#.*$", "", _unquote(raw)).strip()
        if re.match(r"^case\b", line):
            in_case = True
        if line == "esac":
            in_case = False
        if in_case and re.match(r"^[^()]*\)", line):  # a case pattern: `a|b) cmd`
            line = line.split(")", 1)[1]
        for segment in _SEPARATORS.split(line):
            words = [w for w in segment.split() if not re.match(r"^\w+=|^\d*[<>]", w)]
            if not words or words[0] in ("for", "case", "select"):
                continue
            word = words[1] if words[0] in ("if", "while", "until", "!", "elif", "time") and len(words) > 1 \
                else words[0]
            if word in SHELL_WORDS or word in functions or word.endswith(")") or word == "Q":
                continue
            if (program := program_of(word)) is not None:
                yield Use(program, f"{origin}:{number}")


def shell_uses(path: Path) -> Iterator[Use]:
    yield from shell_commands(path.read_text(), str(path.relative_to(REPO)))


def makefile_uses(path: Path) -> Iterator[Use]:
    """The recipes' commands (tab-indented lines), make's own $(VAR)s left out."""
    for number, line in _logical_lines(path.read_text(), 1):
        if line.startswith("\t"):
            recipe = re.sub(r"\$\((?:[A-Z_]+|shell [^)]*)\)", "Q", line.lstrip("\t@-")).replace("$$", "$")
            yield from shell_commands(recipe, str(path.relative_to(REPO)), number)


# --- Ansible ------------------------------------------------------------------

def ansible_uses(path: Path) -> Iterator[Use]:
    """Programs in command tasks (argv lists and command strings), shell tasks'
    scripts, and the units' ExecStart lines."""
    lines = path.read_text().splitlines()
    where = str(path.relative_to(REPO))
    for index, line in enumerate(lines):
        number = index + 1
        words: list[str] = []
        if match := re.match(r"^\s*ansible\.builtin\.command:\s*(\S.*)$", line):
            words = [match.group(1).split()[0]]
        elif match := re.match(r"^\s*(?:- )?argv:\s*\[\s*([^,\]]+)", line):
            words = [match.group(1).strip()]
        elif re.match(r"^\s*(?:- )?argv:\s*$", line) and index + 1 < len(lines):
            words = [lines[index + 1].strip().lstrip("- ").strip()]
        elif match := re.match(r"^ExecStart=(\S+)", line):
            words = [match.group(1)]
        elif match := re.match(r"^(\s*)cmd:\s*([|>]-?)?\s*(.*)$", line):
            indent, block, rest = match.groups()
            if block:
                body = []
                for following in lines[index + 1:]:
                    if following.strip() and len(following) - len(following.lstrip()) <= len(indent):
                        break
                    body.append(following)
                script = "\n".join(body) if block.startswith("|") else " ".join(body)
                yield from shell_commands(script, where, number + 1 if block.startswith("|") else number)
            else:
                yield from shell_commands(rest.strip("\"'"), where, number)
        for word in words:
            if (program := program_of(word.strip("\"'"))) is not None:
                yield Use(program, f"{where}:{number}")
        for word in re.findall(r"(?<![\w./}-])(/(?:usr/(?:local/)?)?s?bin/[\w.+-]+)", line):
            if (program := program_of(word)) is not None:
                yield Use(program, f"{where}:{number}")


@functools.cache
def all_uses() -> list[Use]:
    """Every program the project's code, scripts, tests and roles run."""
    uses: list[Use] = []
    for directory in PYTHON_DIRS:
        for path in sorted((REPO / directory).rglob("*")):
            relative = path.relative_to(REPO)
            if path.is_file() and not any(part.startswith(".") for part in relative.parts) \
                    and relative.parts[:2] != ("client", "cloudapi"):  # generated stubs
                if path.suffix == ".py" or (path.suffix == "" and path.read_bytes()[:2] == b"#!"):
                    if path.suffix == ".py" or b"python" in path.read_bytes()[:40]:
                        uses += python_uses(path)
    for pattern in SHELL_FILES:
        for path in sorted(REPO.glob(pattern)):
            uses += shell_uses(path)
    uses += makefile_uses(REPO / "Makefile")
    for pattern in ANSIBLE_FILES:
        for path in sorted(REPO.glob(pattern)):
            uses += ansible_uses(path)
    return uses
