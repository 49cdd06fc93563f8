import textwrap

import pytest

from forge.catalog import load_catalog, load_file
from forge.errors import CatalogError

GOOD = """
sources:
  mine:
    description: my data
    connector: json
    formatter: columns
    local: data.jsonl
    lang: EN
    task: TS
    gen: HG
    license: MIT
"""


def write(tmp_path, text):
    p = tmp_path / "catalog.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_builtin_catalog_loads():
    cat = load_catalog()
    for name in ("alpaca", "belle_0.5m", "flan_cot"):
        assert name in cat


def test_user_catalog_adds_to_builtin(tmp_path):
    cat = load_catalog(write(tmp_path, GOOD))
    assert "mine" in cat and "alpaca" in cat
    assert cat.get("mine").base_dir == tmp_path


@pytest.mark.parametrize(
    "edit, field, message",
    [
        (lambda s: s.replace("    gen: HG\n", ""), "gen", "required field is missing"),
        (lambda s: s.replace("lang: EN", "lang: XX"), "lang", "'XX' is not one of CN, EN, ML"),
        (lambda s: s.replace("connector: json", "connector: parquetz"), "connector", "is not one of"),
        (lambda s: s.replace("license: MIT", "licence: MIT"), "licence", "did you mean 'license'"),
        (lambda s: s.replace("    local: data.jsonl\n", ""), "hub", "needs at least one location"),
    ],
)
def test_validation_errors_name_file_entry_field(tmp_path, edit, field, message):
    path = write(tmp_path, edit(GOOD))
    with pytest.raises(CatalogError) as e:
        load_file(path)
    text = str(e.value)
    assert str(path) in text and "'mine'" in text and f"field {field!r}" in text and message in text


def test_invalid_yaml_names_file(tmp_path):
    path = write(tmp_path, "sources: [unclosed\n")
    with pytest.raises(CatalogError, match=r"catalog.yaml: invalid YAML"):
        load_file(path)


def test_unknown_source_suggests_close_matches():
    with pytest.raises(CatalogError, match=r"unknown source 'alpacca'; did you mean alpaca"):
        load_catalog().get("alpacca")
