"""Settings from environment variables are read where they are used (issue #30, item 11):
a bad value fails only the command that needs it, in one line naming the variable and the
form it accepts; human sizes such as 64MB are accepted."""

import os
import subprocess
from pathlib import Path

import pytest

from forge.settings import SettingError, byte_size, parse_byte_size

FORGE = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "forge"


def forge(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "FORGE_HOME": str(home), "COLUMNS": "200", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([str(FORGE), *args], env=e, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "text, size",
    [
        ("67108864", 64 << 20),
        ("64MiB", 64 << 20),
        ("64M", 64 << 20),
        ("64mib", 64 << 20),
        ("64MB", 64_000_000),
        ("512k", 512 << 10),
        ("512KB", 512_000),
        (" 2 GiB ", 2 << 30),
        ("1.5G", 3 << 29),
        ("100B", 100),
        ("8.2GB", 8_200_000_000),  # exact: float arithmetic made it 8,199,999,999
        ("2.01KB", 2010),
        ("1.0000001KB", 1000),  # a fraction of a byte left over is dropped
    ],
)
def test_sizes(text, size):
    assert parse_byte_size(text) == size


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "",
        "64 megabytes",
        "-5",
        "1.5",
        "0x40",
        "64MBB",
        "M",
        "9" * 400 + "M",
        "9" * 30,
        "２MB",
        "2000000TB",
    ],
)
def test_not_sizes(text):
    assert parse_byte_size(text) is None


def test_byte_size_reads_the_variable_when_called(monkeypatch):
    monkeypatch.delenv("FORGE_TEST_BYTES", raising=False)
    assert byte_size("FORGE_TEST_BYTES", 123) == 123
    monkeypatch.setenv("FORGE_TEST_BYTES", "  ")
    assert byte_size("FORGE_TEST_BYTES", 123) == 123
    monkeypatch.setenv("FORGE_TEST_BYTES", "8MiB")
    assert byte_size("FORGE_TEST_BYTES", 123) == 8 << 20
    for bad in ("abc", "0"):
        monkeypatch.setenv("FORGE_TEST_BYTES", bad)
        with pytest.raises(SettingError, match=r"FORGE_TEST_BYTES='[a-z0-9]+' .*64MB, 64MiB or 512k"):
            byte_size("FORGE_TEST_BYTES", 123)


@pytest.mark.parametrize("variable", ["FORGE_PART_BYTES", "FORGE_DEDUP_PARTITION_BYTES"])
def test_a_bad_value_does_not_break_unrelated_commands(variable, tmp_path):
    r = forge(["--version"], tmp_path / "home", **{variable: "abc"})
    assert r.returncode == 0 and r.stdout.startswith("forge"), r.stderr
    assert "Traceback" not in r.stderr


def test_a_bad_part_size_fails_the_build_in_one_line(tmp_path):
    home = tmp_path / "home"
    r = forge(["build", "alpaca", "--sample"], home, FORGE_PART_BYTES="abc")
    assert r.returncode != 0, r.stdout
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error:") and "FORGE_PART_BYTES='abc'" in lines[0], lines[0]
    assert "64MB, 64MiB or 512k" in lines[0], lines[0]  # the accepted form
    assert not (home / "sources" / "alpaca" / "CURRENT").exists()


def test_a_human_part_size_is_accepted(tmp_path):
    r = forge(["build", "alpaca", "--sample"], tmp_path / "home", FORGE_PART_BYTES="64MB")
    assert r.returncode == 0, r.stderr
    assert "alpaca" in r.stdout and "built" in r.stdout


def test_a_bad_partition_size_fails_dedup_in_one_line(tmp_path):
    from forge.build import build_source
    from forge.catalog import load_catalog

    home = tmp_path / "home"
    build_source(load_catalog().get("alpaca"), home=home, sample=True)
    r = forge(
        ["dedup", "alpaca", "--out", str(tmp_path / "dd")], home, FORGE_DEDUP_PARTITION_BYTES="64 megabytes"
    )
    assert r.returncode != 0, r.stdout
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "FORGE_DEDUP_PARTITION_BYTES='64 megabytes'" in lines[0] and "64MiB" in lines[0], lines[0]
