"""Hostile and odd inputs to the readers, the cache and the commands: a result or one sentence with
exit code 2, within a time bound, nothing written outside the output, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from spectui.cache import Cache
from spectui.checkpoint.comparison import open_comparison, open_store
from spectui.checkpoint.files import CheckpointError
from spectui.engine import Scan
from spectui.errors import InputError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TIME_BOUND_S = 5.0


def raw_safetensors(path: Path, header, data: bytes = b"") -> Path:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


def one_line_exit_2(ran) -> str:
    lines = [line for line in ran.err.splitlines() if line.strip()]
    assert ran.code == 2 and len(lines) == 1 and "Traceback" not in ran.err, ran.err
    return lines[0]


def opens_or_refuses(path: Path) -> None:
    """Open a checkpoint and read every tensor: each step succeeds or raises CheckpointError."""
    start = time.monotonic()
    try:
        store = open_store(path)
        for name in store.names():
            store.load(name)
    except CheckpointError:
        pass
    assert time.monotonic() - start < TIME_BOUND_S


# -- safetensors headers ----------------------------------------------------------------------

scalars = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=5), st.booleans(),
                    st.none())
entries = st.fixed_dictionaries({}, optional={
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "I8", "BOOL", "F64", "X9"]), scalars),
    "shape": st.one_of(st.lists(st.integers(-3, 10**12), max_size=4), scalars),
    "data_offsets": st.one_of(st.lists(st.one_of(st.integers(-64, 128), scalars), min_size=0, max_size=3), scalars),
})
headers = st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(entries, scalars), max_size=4)


@FUZZ
@given(header=headers, data=st.binary(max_size=128))
def test_any_safetensors_header_opens_or_is_refused_in_one_sentence(tmp_path, header, data):
    opens_or_refuses(raw_safetensors(tmp_path / "model.safetensors", header, data))


@FUZZ
@given(blob=st.binary(max_size=256))
def test_any_bytes_as_a_safetensors_file_open_or_are_refused(tmp_path, blob):
    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    opens_or_refuses(path)


def test_offsets_before_the_data_section_are_refused(tmp_path):
    # the header's own bytes would be read as weights
    path = raw_safetensors(tmp_path / "model.safetensors",
                           {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [-16, 0]}}, b"")
    with pytest.raises(CheckpointError, match="lies past the end"):
        open_store(path)


@pytest.mark.parametrize("offsets", [["0", "16"], [0.0, 16.0], [True, 16], [0, 16, 32], "0-16"])
def test_offsets_of_the_wrong_type_are_refused(tmp_path, offsets):
    path = raw_safetensors(tmp_path / "model.safetensors",
                           {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": offsets}}, bytes(16))
    with pytest.raises(CheckpointError, match="malformed data offsets"):
        open_store(path)


def test_deeply_nested_header_is_refused(tmp_path):
    path = raw_safetensors(tmp_path / "model.safetensors", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(CheckpointError, match="nests JSON too deeply"):
        open_store(path)


def test_tensor_names_that_are_not_unicode_are_refused(tmp_path):
    header = b'{"w\\udc80": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    with pytest.raises(CheckpointError, match="not valid Unicode"):
        open_store(raw_safetensors(tmp_path / "model.safetensors", header, bytes(4)))


def test_a_fifo_in_place_of_weights_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "model.safetensors")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="not a regular file"):
        open_store(tmp_path)
    assert time.monotonic() - start < TIME_BOUND_S


def test_zero_size_matrices_are_skipped_with_a_reason(tmp_path):
    for name in ("base", "tuned"):
        raw_safetensors(tmp_path / name / "model.safetensors",
                        {"layers.0.empty.weight": {"dtype": "F32", "shape": [0, 1_000_000_000_000],
                                                   "data_offsets": [0, 0]},
                         "layers.0.real.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}},
                        np.eye(2, dtype=np.float32).tobytes())
    comparison = open_comparison(str(tmp_path / "base"), [str(tmp_path / "tuned")])
    skipped = {s.name: s.reason for s in comparison.tuned[0].pairing.skipped}
    assert skipped["layers.0.empty.weight"].startswith("empty (0, 1000000000000)")


# -- shard indexes ----------------------------------------------------------------------------

@pytest.mark.parametrize("shard", ["../../etc/passwd", "/etc/passwd", "../outside.safetensors"])
def test_a_shard_index_may_not_name_a_file_outside_its_checkpoint(tiny, tmp_path, shard):
    model = tmp_path / "model"
    shutil.copytree(tiny / "base", model)
    shutil.copy(model / "model.safetensors", tmp_path / "outside.safetensors")
    (model / "model.safetensors").rename(model / "inside.safetensors")
    names = load_file(model / "inside.safetensors")
    weight_map = dict.fromkeys(names, "inside.safetensors") | {next(iter(names)): shard}
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="outside"):
        open_store(model)


@FUZZ
@given(index=st.one_of(st.dictionaries(st.text(max_size=6), st.one_of(scalars, st.dictionaries(
    st.text(max_size=6), st.one_of(scalars, st.sampled_from(["inside.safetensors", "..", "/", ""])), max_size=3))),
    scalars, st.lists(scalars, max_size=3)))
def test_any_shard_index_opens_or_is_refused(tiny, tmp_path, index):
    model = tmp_path / "m"
    model.mkdir(exist_ok=True)
    shutil.copy(tiny / "base" / "model.safetensors", model / "inside.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    opens_or_refuses(model)


# -- adapter configs --------------------------------------------------------------------------

def with_config(tiny: Path, tmp_path: Path, **changes) -> Path:
    adapter = tmp_path / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    shutil.copytree(tiny / "lora", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return adapter


@pytest.mark.parametrize(("changes", "phrase"), [
    ({"r": "2"}, "r must be an integer"),
    ({"r": None}, "r must be an integer"),
    ({"r": -2}, "r must be an integer of at least 1"),
    ({"r": 0}, "r must be an integer of at least 1"),
    ({"r": True}, "r must be an integer"),
    ({"r": 3}, "do not have the rank r=3"),
    ({"lora_alpha": "4"}, "lora_alpha must be a finite number"),
    ({"rank_pattern": {"q_proj": 0}}, "rank_pattern"),
    ({"rank_pattern": {"(": 2}}, "is not a valid pattern"),
    ({"rank_pattern": {"(a+)+$": 2}}, None),  # matched in time: the regex engine does not backtrack here
    ({"alpha_pattern": [1, 2]}, "alpha_pattern must be a table"),
    ({"use_rslora": "yes"}, "use_rslora must be true or false"),
    ({"base_model_name_or_path": 7}, "base_model_name_or_path must be a string"),
])
def test_adapter_config_values_are_checked_before_use(cli, tiny, tmp_path, changes, phrase):
    ran = cli("scan", tiny / "base", with_config(tiny, tmp_path, **changes), "--no-cache")
    if phrase is None:
        assert ran.code == 0, ran.err
    else:
        assert phrase in one_line_exit_2(ran)


def test_a_catastrophically_backtracking_pattern_is_refused_in_time(tmp_path):
    from spectui.checkpoint.adapters import _pattern_value

    module = "model.layers.0.self_attn." + "a" * 40 + "!"
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="takes too long to match"):  # 2^40 ways to fail
        _pattern_value({"(a|a)+$": 4}, module, 2, tmp_path / "adapter_config.json", "rank_pattern")
    assert time.monotonic() - start < TIME_BOUND_S


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(["r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora",
                                                "fan_in_fan_out", "peft_type", "init_lora_weights"]),
                               st.one_of(scalars, st.dictionaries(st.text(max_size=8), scalars, max_size=2)),
                               max_size=3))
def test_any_adapter_config_opens_or_is_refused(tiny, tmp_path, changes):
    adapter = with_config(tiny, tmp_path, **changes)
    start = time.monotonic()
    try:
        comparison = open_comparison(str(tiny / "base"), [str(adapter)])
        source = comparison.tuned[0].source
        for spec in comparison.tuned[0].pairing.matrices[:2]:
            source.load(spec.tuned_name)
    except InputError:
        pass
    assert time.monotonic() - start < TIME_BOUND_S


def test_an_ambiguous_relative_base_is_refused_and_a_clear_one_is_named(cli, tiny, tmp_path, monkeypatch):
    shutil.copytree(tiny / "base", tmp_path / "base")
    adapter = with_config(tiny, tmp_path, base_model_name_or_path="../base")
    ran = cli("scan", adapter, "--no-cache", "--json")
    assert ran.code == 0 and f"spectui: note: base {tmp_path / 'base'}, as" in ran.err, ran.err
    (tmp_path / "work" / "here").mkdir(parents=True)
    shutil.copytree(tiny / "full", tmp_path / "work" / "base")  # ../base from here: another model
    monkeypatch.chdir(tmp_path / "work" / "here")
    assert "pass BASE explicitly" in one_line_exit_2(cli("scan", adapter, "--no-cache"))


# -- outputs ----------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_mitigate_never_writes_inside_a_source(cli, tiny, tmp_path):
    tuned = tmp_path / "full"
    shutil.copytree(tiny / "full", tuned)
    before = snapshot(tuned)
    for out in (tuned / "sub", tuned, tmp_path):
        ran = cli("mitigate", tiny / "base", tuned, "--lambda", "0.5", "--out", out, "--force", "--no-cache")
        assert "would replace the source" in one_line_exit_2(ran)
    assert snapshot(tuned) == before


def test_a_killed_export_leaves_nothing_the_next_one_keeps(cli, tiny, tmp_path):
    dead = 2**22 + 12345  # above the kernel's pid_max default: no such process
    leftover = tmp_path / f".out.{dead}-deadbeef.tmp"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    ran = cli("mitigate", tiny / "base", tiny / "full", "--lambda", "0.5", "--out", tmp_path / "out", "--no-cache")
    assert ran.code == 0, ran.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_output_under_a_file_is_one_line(cli, tiny, tmp_path):
    (tmp_path / "file").write_text("")
    ran = cli("mitigate", tiny / "base", tiny / "full", "--lambda", "0.5", "--out", tmp_path / "file" / "out",
              "--no-cache")
    assert "file" in one_line_exit_2(ran)


@pytest.mark.parametrize("lam", ["nan", "-1", "1e9", "inf", "x"])
def test_a_bad_lambda_is_one_sentence(cli, tiny, tmp_path, lam):
    with pytest.raises(SystemExit) as exit_:
        cli("mitigate", tiny / "lora", "--lambda", lam, "--out", tmp_path / "out")
    assert exit_.value.code == 2


def test_argparse_errors_are_one_line(tiny):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "spectui", "scan", "--eps", "abc"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "spectui scan: error: argument --eps: 'abc' is not a number (see spectui scan --help)"]


# -- the probe's text -------------------------------------------------------------------------

def test_probe_text_of_whitespace_is_refused(cli, tmp_path):
    from spectui.locations import samples_dir

    (tmp_path / "ref.txt").write_text(" \n\t \n")
    ran = cli("probe", samples_dir() / "base", samples_dir() / "lora", "--text", tmp_path / "ref.txt",
              "--cache-dir", tmp_path / "cache")
    assert "fewer than two tokens" in one_line_exit_2(ran)


def test_probe_reads_a_bounded_prefix_of_one_huge_line(tmp_path):
    from spectui.probe import _leading_text

    path = tmp_path / "huge.txt"
    with open(path, "wb") as fh:
        fh.write("é".encode() * 5_000_000)  # 10 MB, one line, two bytes a character
    text = _leading_text(path, 1001)  # cuts a character in half: left out, not an error
    assert text == "é" * 500


# -- the cache --------------------------------------------------------------------------------

def scan_json(comparison, cache):
    from spectui.report.records import scan_json as record
    from spectui.results import ScanResults

    scan = Scan(comparison, cache, device="cpu", workers=1).run()
    return record(ScanResults(comparison, scan.results, scan.errors), 10, 0.5)


@pytest.fixture(scope="module")
def cached(tiny, tmp_path_factory):
    """A warm cache of the tiny LoRA scan, and the scan's JSON."""
    root = tmp_path_factory.mktemp("cache")
    comparison = open_comparison(str(tiny / "base"), [str(tiny / "lora")])
    return root, scan_json(comparison, Cache(root))


@FUZZ
@given(position=st.floats(0, 1, exclude_max=True), value=st.integers(0, 255))
def test_a_damaged_byte_anywhere_in_the_cache_is_recomputed_identically(tiny, cached, tmp_path, position, value):
    root, expected = cached
    copy = tmp_path / "cache"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root, copy)
    entries = sorted(copy.rglob("*.safetensors"))
    data = bytearray(b"".join(p.read_bytes() for p in entries))
    offset = int(position * len(data))
    for entry in entries:  # find the entry holding that byte and damage it there
        size = entry.stat().st_size
        if offset < size:
            blob = bytearray(entry.read_bytes())
            blob[offset] = value if blob[offset] != value else (value + 1) % 256
            entry.write_bytes(bytes(blob))
            break
        offset -= size
    comparison = open_comparison(str(tiny / "base"), [str(tiny / "lora")])
    assert scan_json(comparison, Cache(copy)) == expected


@pytest.mark.parametrize("kind", ["a file", "read-only", "full"])
def test_a_cache_that_cannot_be_written_is_said_once_and_the_scan_goes_on(cli, tiny, tmp_path, monkeypatch, kind):
    import errno

    import spectui.atomic

    cache = tmp_path / "cache"
    if kind == "a file":
        cache.write_text("")
    else:  # as root, permissions cannot make a directory read-only: the file system's answer is played
        code = errno.EROFS if kind == "read-only" else errno.ENOSPC

        def refused(path, data):
            raise OSError(code, os.strerror(code), str(path))

        monkeypatch.setattr(spectui.atomic, "write_bytes", refused)
    ran = cli("scan", tiny / "base", tiny / "lora", "--json", "--cache-dir", cache)
    assert ran.code == 0 and json.loads(ran.out)["total_intruders"] > 0
    warnings = [line for line in ran.err.splitlines() if "cannot write the cache" in line]
    assert len(warnings) == 1, ran.err


# -- the last resort --------------------------------------------------------------------------

def test_an_unexpected_error_is_one_line_with_its_log(cli, tiny, tmp_path, monkeypatch):
    import spectui.report.records

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody planned for")

    monkeypatch.setattr(spectui.report.records, "scan_json", broken)
    ran = cli("scan", tiny / "base", tiny / "lora", "--json", "--no-cache")
    lines = [line for line in ran.err.splitlines() if line.strip()]
    log = tmp_path / "state" / "spectui" / "errors.log"
    assert ran.code == 1 and lines == [f"spectui: internal error: RuntimeError: something nobody planned for "
                                       f"(details in {log})"]
    assert "Traceback" in log.read_text() and "Traceback" not in ran.err


def test_safetensors_written_by_the_library_still_open(tiny, tmp_path):
    state = load_file(tiny / "base" / "model.safetensors")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert set(open_store(tmp_path / "model.safetensors").names()) == set(state)


# -- what the hostile battery found (each a regression test) ---------------------------------

@pytest.mark.parametrize("option", ["--csv", "--markdown", "--out"])
def test_a_report_never_overwrites_or_writes_into_a_source(cli, tiny, tmp_path, option):
    tuned = tmp_path / "full"
    shutil.copytree(tiny / "full", tuned)
    before = snapshot(tuned)
    target = {"--csv": tuned / "model.safetensors", "--markdown": tuned / "config.json",
              "--out": tuned / "sub" / "r.html"}[option]
    assert "would replace the source" in one_line_exit_2(cli("report", tiny / "base", tuned, option, target))
    assert snapshot(tuned) == before


def test_a_cache_dir_inside_a_source_is_refused(cli, tiny, tmp_path):
    tuned = tmp_path / "full"
    shutil.copytree(tiny / "full", tuned)
    before = snapshot(tuned)
    ran = cli("scan", tiny / "base", tuned, "--cache-dir", tuned / "cache")
    assert "--cache-dir" in one_line_exit_2(ran) and snapshot(tuned) == before


def test_a_fifo_for_a_cache_manifest_blocks_nothing(cli, tiny, tmp_path):
    cache = tmp_path / "cache"
    assert cli("scan", tiny / "base", tiny / "lora", "--cache-dir", cache).code == 0
    for manifest in (cache / "models").glob("*.json"):
        manifest.unlink()
        os.mkfifo(manifest)
    start = time.monotonic()
    assert cli("cache", "info", "--cache-dir", cache).code == 0
    assert cli("scan", tiny / "base", tiny / "lora", "--cache-dir", cache).code == 0
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("argv", [
    ("scan", "--cache-max", "1" + "0" * 400),
    ("probe", "--text", "x", "--max-tokens", "1000000000000000"),
    ("--serve", "--port", "abc"),
])
def test_absurd_option_values_are_one_line(cli, argv):
    with pytest.raises(SystemExit) as exit_:
        cli(*argv)
    assert exit_.value.code == 2


def test_a_config_with_a_number_of_thousands_of_digits_is_one_line(cli, tiny, tmp_path):
    shutil.copytree(tiny / "base", tmp_path / "base")
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    text = json.dumps(config)[:-1] + ', "num_hidden_layers_x": ' + "9" * 5000 + "}"
    (tmp_path / "base" / "config.json").write_text(text)
    assert "too long" in one_line_exit_2(cli("scan", tmp_path / "base", tiny / "full", "--no-cache"))


def test_a_shard_name_with_a_nul_byte_is_refused(tiny, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny / "base", model)
    names = load_file(model / "model.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(names, "a\0b")}))
    with pytest.raises(CheckpointError, match="not a file name"):
        open_store(model)


def test_control_characters_in_tensor_names_never_reach_the_terminal(tmp_path):
    header = {"w\x1b]0;PWNED\x07\x1b[2J": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    with pytest.raises(CheckpointError, match="control characters") as raised:
        open_store(raw_safetensors(tmp_path / "model.safetensors", header, bytes(4)))
    assert "\x1b" not in str(raised.value)


def test_a_manifest_naming_a_path_with_escapes_is_ignored(tiny, cache_dir, cli):
    assert cli("scan", tiny / "base", tiny / "lora", "--cache-dir", cache_dir).code == 0
    for manifest in (cache_dir / "models").glob("*.json"):
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**data, "path": "\x1b[2J\x1b]0;PWN\x07/x"}))
    ran = cli("cache", "info", "--cache-dir", cache_dir)
    assert ran.code == 0 and "\x1b" not in ran.out


def test_one_bad_value_failing_every_matrix_is_one_line(cli, tiny, tmp_path):
    ran = cli("scan", tiny / "base", with_config(tiny, tmp_path, lora_alpha=1e308), "--no-cache")
    assert "more matrices could not be scanned" in one_line_exit_2(ran)


def test_a_pickle_of_an_odd_protocol_is_refused_in_one_line(cli, tiny, tmp_path):
    import pickle

    model = tmp_path / "m"
    shutil.copytree(tiny / "base", model)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"w": [1, 2, 3]}, protocol=4))
    assert "pytorch_model.bin" in one_line_exit_2(cli("scan", model, tiny / "full", "--no-cache"))


def test_serve_on_a_port_in_use_is_one_line(cli, tiny):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ran = cli("--serve", "--port", busy.getsockname()[1], tiny / "base", tiny / "lora")
    assert "cannot listen" in one_line_exit_2(ran)
