"""One writer per record type: only control/compute/records.py writes instance
records (the keys built by keys.instance, keys.instance_name and keys.instance_index),
and only it meters them (meter_into), so every change of an instance checks its
transition, is metered and records its action the same way.

A static check over control/: a call of a store or transaction write (put,
delete, update, ...) whose key is built by one of those functions, directly or
through a local name assigned from one, anywhere but in the writer, fails the
test naming file:line. (A key read back from a record, `record.key`, is not
traced: the writer is the only module that gets an instance record to write.)"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WRITER = "control/compute/records.py"
METERING = "control/metering/usage.py"
INSTANCE_KEYS = {"instance", "instance_name", "instance_index"}
WRITES = {"put", "delete", "update", "apply", "put_if_absent", "put_expiring", "create_leased",
          "delete_prefix"}


def _is_instance_key(node: ast.AST, names: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in names
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "keys"
            and node.func.attr in INSTANCE_KEYS)


class _Finder(ast.NodeVisitor):
    """Writes of instance keys and calls of meter_into, by line. Names assigned
    from an instance key are followed within a function and the functions it
    encloses (a closure's `key`)."""

    def __init__(self) -> None:
        self.scopes: list[set[str]] = [set()]
        self.found: list[tuple[int, str]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scopes.append(set(self.scopes[-1]))
        # Assignments first, so a name used in a closure defined above them counts.
        for child in ast.walk(node):
            if isinstance(child, ast.Assign) and _is_instance_key(child.value, self.scopes[-1]):
                self.scopes[-1] |= {t.id for t in child.targets if isinstance(t, ast.Name)}
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Assign(self, node: ast.Assign) -> None:
        if _is_instance_key(node.value, self.scopes[-1]):
            self.scopes[-1] |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func, names = node.func, self.scopes[-1]
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in WRITES and node.args and _is_instance_key(node.args[0], names):
            self.found.append((node.lineno, f"{name}() of an instance key"))
        if name == "Txn":  # Txn(puts={...}, deletes=[...])
            for keyword in node.keywords:
                value = keyword.value
                parts = value.keys if isinstance(value, ast.Dict) else \
                    value.elts if isinstance(value, (ast.List, ast.Tuple)) else []
                if any(p is not None and _is_instance_key(p, names) for p in parts):
                    self.found.append((node.lineno, f"Txn({keyword.arg}=...) of an instance key"))
        if name == "meter_into":
            self.found.append((node.lineno, "meter_into() (metering is the writer's)"))
        self.generic_visit(node)


def stray_writes(source: str, filename: str) -> list[str]:
    finder = _Finder()
    finder.visit(ast.parse(source, filename))
    return [f"{filename}:{line}: {what}" for line, what in sorted(finder.found)]


def test_only_the_writer_writes_instance_records():
    found = []
    for path in sorted((ROOT / "control").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name in (WRITER, METERING):
            continue
        found += stray_writes(path.read_text(), name)
    assert not found, "instance records written outside " + WRITER + ":\n" + "\n".join(found)


def test_the_writer_is_seen_writing():
    """The check finds the writes it exists to forbid (it would pass on nothing otherwise)."""
    assert len(stray_writes((ROOT / WRITER).read_text(), WRITER)) >= 6


def test_the_check_follows_names_and_closures():
    source = '''
def create(txn, store, p, i, other):
    key = keys.instance(p, i)
    index = keys.instance_index(i)
    txn.put(keys.instance_name(p, "n"), {})
    txn.delete(index)
    store.put(keys.host("h"), {})          # not an instance key
    txn.put(other.key, {})                 # not traced

    def change(record):
        return Txn().expect(record).put(key, {})
    store.update(key, change)
    Txn(deletes=[key])
    meter_into(txn, None, None, 0)

def elsewhere(txn):
    txn.put(key, {})                       # another function's `key`: not this one
'''
    assert [f.split(": ", 1)[0] for f in stray_writes(source, "x.py")] == [
        "x.py:5", "x.py:6", "x.py:11", "x.py:12", "x.py:13", "x.py:14"]
