"""The one output-path rule (engine/outpath.py), tried on every output option of every verb.

The options are *discovered* from the argument parsers (``lightcl.cli.build_parser``): every option marked
with ``_args.output`` (``--json``, ``--out``, ``--state``) and every option whose name says it writes
(``--out*``, ``--json``, ``--log*``, ``--report*``, ``--plot*``, ``--record*``, ``--save*``) must be marked, so a
new verb's output option is covered without editing this file. Each one gets hostile targets: a symbolic
link to a file outside (its bytes must stay), a dangling link, a link loop, a FIFO, a character device
(made with mknod: never the machine's /dev/null), a directory (file outputs) or a regular file (directory
outputs), a path under a regular file and one through a symlink-loop folder. Every case must end in one
line, a non-zero exit, and the target left exactly as it was.
"""
from __future__ import annotations

import argparse
import os
import re
import stat
from pathlib import Path

import pytest

from hostile_util import cli, count, report_hostile_counts, watchdog  # noqa: F401  (the counts fixture)

OUTPUT_NAME = re.compile(r"^--(out|output|json|log|report|plot|record|save)([-_].*)?$")
# verbs whose run would need a dataset download or a long run were it not refused first; they are
# still tried (the refusal must come before any work) with the values below.
PLACEHOLDERS = {
    "export_dir": "EXPORT", "ckpt": "CKPT", "checkpoint": "CKPT", "state": "STATE", "suite": "smoke",
    "dataset": "digits", "images": "IMAGES",
}


def _subparsers(p: argparse.ArgumentParser):
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices
    return {}


def _leaves(p: argparse.ArgumentParser, prefix=()):
    """(argv prefix, parser) of every verb and sub-verb that takes arguments of its own."""
    subs = _subparsers(p)
    if not subs:
        yield prefix, p
    for name, sp in subs.items():
        yield from _leaves(sp, prefix + (name,))


def output_options():
    from lightcl.cli import build_parser

    parser, _ = build_parser()
    found = []
    for prefix, p in _leaves(parser):
        for a in p._actions:
            flags = [s for s in a.option_strings if s.startswith("--")]
            kind = getattr(a, "lightcl_output", None)
            if kind is None and any(OUTPUT_NAME.match(s) for s in flags) and a.nargs != 0:
                raise AssertionError(f"lightcl {' '.join(prefix)} {flags}: an output option not marked with "
                                     "lightcl.commands._args.output (the one output rule must apply to it)")
            if kind is not None:
                found.append((prefix, p, a, kind))
    return found


def test_every_output_option_is_marked_and_found():
    opts = {(" ".join(prefix), a.option_strings[0]): kind for prefix, _p, a, kind in output_options()}
    # the verbs known when this was written; a new one adds to the list, never removes from it
    for key in [("learn", "--json"), ("learn", "--state"), ("predict", "--json"), ("export", "--json"),
                ("export", "--out"), ("pretrain", "--json"), ("pretrain", "--out"), ("analyze", "--out"),
                ("bench latency", "--json"), ("bench update", "--json"), ("bench suite", "--out"),
                ("demo", "--out")]:
        assert key in opts, key
    assert ("info", "--json") not in opts  # a switch that prints to stdout, not a path


def _argv(prefix, p: argparse.ArgumentParser, action, value: str, fill: dict) -> list[str]:
    """The verb's required arguments from ``fill`` and ``action`` set to ``value``."""
    argv = list(prefix)
    for a in p._actions:
        if a is action or isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        required = (not a.option_strings) or a.required
        groups = [g for g in p._mutually_exclusive_groups if a in g._group_actions and g.required]
        if groups and a is groups[0]._group_actions[0]:
            required = True
        if not required:
            continue
        if a.dest not in fill:
            raise AssertionError(f"lightcl {' '.join(prefix)}: no placeholder for required {a.dest!r}: add one to "
                                 "PLACEHOLDERS in tests/test_output_paths.py")
        v = fill[a.dest]
        argv += ([v] if not a.option_strings else [a.option_strings[0], v])
    argv += [action.option_strings[0], value]
    return argv


def _hostile(tmp: Path, kind: str):
    """(name, path to hand over, check after) for each hostile target of a ``kind`` output."""
    outside = tmp / "outside"
    outside.mkdir(parents=True)
    victim = outside / "victim.txt"
    victim.write_bytes(b"not lightcl's\n")
    victim_dir = outside / "victim_dir"
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_bytes(b"keep\n")
    cases = []

    def add(name, path, check):
        cases.append((name, path, check))

    w = tmp / "w"
    w.mkdir()
    if kind in ("file", "prefix"):
        link = w / "link.json"
        link.symlink_to(victim)
        add("symlink to a file outside", link, lambda: link.is_symlink() and victim.read_bytes() == b"not lightcl's\n")
        d = w / "dir.json"
        d.mkdir()
        add("a directory", d, lambda: d.is_dir() and not any(d.iterdir()))
    else:
        link = w / "linkdir"
        link.symlink_to(victim_dir)
        add("symlink to a directory outside", link,
            lambda: link.is_symlink() and sorted(p.name for p in victim_dir.iterdir()) == ["keep.txt"])
        f = w / "file"
        f.write_bytes(b"user data\n")
        add("a regular file", f, lambda: f.read_bytes() == b"user data\n")
    dangling = w / "dangling"
    dangling.symlink_to(outside / "nowhere")
    add("dangling symlink", dangling, lambda: dangling.is_symlink() and not (outside / "nowhere").exists())
    loop = w / "loop"
    loop.symlink_to(loop)
    add("symlink loop", loop, lambda: loop.is_symlink() and os.readlink(loop) == str(loop))
    fifo = w / "fifo"
    os.mkfifo(fifo)
    add("FIFO", fifo, lambda: stat.S_ISFIFO(os.lstat(fifo).st_mode))
    dev = w / "null"
    try:  # a device of our own: a failing test must never replace the machine's /dev/null (we may be root)
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        add("character device", dev, lambda: stat.S_ISCHR(os.lstat(dev).st_mode))
    except (PermissionError, OSError):
        pass
    plain = w / "plain"
    plain.write_bytes(b"x")
    add("under a regular file", plain / "sub" / "out.json", lambda: plain.read_bytes() == b"x")
    loopdir = w / "loopdir"
    loopdir.symlink_to(loopdir)
    add("inside a symlink-loop folder", loopdir / "out.json", lambda: loopdir.is_symlink())
    return cases


@pytest.fixture(scope="module")
def fill(digits_ckpt, digits_export, tmp_path_factory):
    from hostile_util import make_state

    d = tmp_path_factory.mktemp("outpaths")
    state = d / "state"
    make_state(digits_export, state)
    img = d / "img"
    img.mkdir()
    return {**PLACEHOLDERS, "export_dir": str(digits_export), "ckpt": str(digits_ckpt),
            "checkpoint": str(digits_ckpt), "state": str(state), "images": str(img), "out": str(d / "fresh" / "out")}


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (os.lstat(p).st_mode, os.lstat(p).st_size) for p in sorted(d.rglob("*"))
            if p.relative_to(d).parts[0] != "cache"}  # LIGHTCL_CACHE (conftest) is not a target


def test_every_output_option_refuses_hostile_targets(fill, tmp_path, monkeypatch):
    """Every discovered output option x every hostile target: one line, non-zero exit, nothing written."""
    tried = 0
    for prefix, p, action, kind in output_options():
        for i, (name, path, check) in enumerate(_hostile(tmp_path / f"{'-'.join(prefix)}{action.dest}",
                                                         "file" if kind == "prefix" else kind)):
            value = str(path)
            if kind == "prefix":  # PREFIX.json is the hostile thing; hand over PREFIX
                if name.startswith(("under", "inside")):
                    value = str(path.with_suffix(""))
                else:
                    real = path.parent / f"ck{i}.json"
                    os.rename(path, real)
                    path, value = real, str(path.parent / f"ck{i}")
                    check = (lambda real=real: os.path.lexists(real) and not stat.S_ISREG(os.lstat(real).st_mode))
            fill_here = dict(fill)
            if prefix[0] == "learn" and action.dest == "json":  # learn --json with a fresh state path
                fill_here["state"] = str(tmp_path / f"learnstate{i}")
            before = _snapshot(tmp_path)
            argv = _argv(prefix, p, action, value, fill_here)
            monkeypatch.chdir(tmp_path)
            with watchdog(60):  # a refusal comes before any work; a verb that starts working fails here
                rc, _out, err = cli(argv)
            assert rc not in (0, None), (argv, name)
            assert check(), (argv, name, "the target was changed")
            assert _snapshot(tmp_path) == before, (argv, name, "something was written")
            tried += 1
            count("data loss", "output paths: hostile targets on every verb's output options")
    assert tried >= 80


def test_write_bytes_atomic_refuses_what_is_not_a_regular_file(tmp_path):
    """The engine's one write path (every JSON, safetensors, report, plot, record): a link, FIFO, device,
    directory is refused and left; a regular file is replaced atomically; never a link out of ``root``."""
    from lightcl.engine.errors import LightCLError
    from lightcl.engine.fileio import write_bytes_atomic, write_json_atomic

    for name, path, check in _hostile(tmp_path, "file"):
        with pytest.raises(LightCLError):
            write_bytes_atomic(path, b"{}")
        assert check(), name
        count("data loss", "output paths: engine write path")
    ok = tmp_path / "ok.json"
    ok.write_bytes(b"old")
    write_json_atomic(ok, {"a": 1})
    assert ok.read_bytes().startswith(b"{") and not [p for p in tmp_path.iterdir() if p.name.startswith(".ok.json")]
    # a link *below* root (OUT/logs -> elsewhere) is not followed out of root
    root = tmp_path / "OUT"
    root.mkdir()
    (root / "logs").symlink_to(tmp_path / "outside")
    with pytest.raises(LightCLError, match="not a directory"):
        write_bytes_atomic(root / "logs" / "x.log", b"x", root=root)
    assert not (tmp_path / "outside" / "x.log").exists()
    with pytest.raises(LightCLError, match="outside"):
        write_bytes_atomic(tmp_path / "elsewhere.json", b"x", root=root)


def test_open_stream_never_follows_a_link_or_blocks(tmp_path):
    from lightcl.engine.errors import LightCLError
    from lightcl.engine.outpath import open_stream

    from hostile_util import watchdog

    with watchdog(10):
        for name, path, check in _hostile(tmp_path, "file"):
            with pytest.raises(LightCLError):
                open_stream(path, root=path.parent if not name.startswith(("under", "inside")) else None)
            assert check(), name
            count("data loss", "output paths: streamed logs")
    f = tmp_path / "w" / "ok.log"
    f.write_text("old old old")
    with open_stream(f) as s:
        s.write("new")
    assert f.read_text() == "new"


def test_a_trailing_slash_or_nul_is_not_a_file_name(tmp_path):
    """`--json newdir/` used to write a file named `newdir`."""
    from lightcl.engine.errors import LightCLError
    from lightcl.engine.fileio import write_json_atomic

    for bad in (f"{tmp_path}/newdir/", f"{tmp_path}/a\0b", f"{tmp_path}/.."):
        with pytest.raises((LightCLError, ValueError)):
            write_json_atomic(bad, {})
        count("data loss", "output paths: not a file name")
    assert not (tmp_path / "newdir").exists()
