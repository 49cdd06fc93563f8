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


def test_add_entry_keeps_comments_and_handles_layouts_an_append_would_break(tmp_path):
    import yaml

    from forge.catalog import add_entry

    entry = {"description": "d", "derive": {"from": "flan_cot", "stage": "translate", "to": "zh"}}
    # block style: appended as text, so comments and order survive
    block = tmp_path / "block.yaml"
    block.write_text("# my sources\nsources:\n  mine:\n    description: x  # keep me\n")
    assert add_entry(block, "new", entry) is True
    assert "# keep me" in block.read_text() and "# my sources" in block.read_text()
    assert list(yaml.safe_load(block.read_text())["sources"]) == ["mine", "new"]
    # `sources: {}` would have taken an indented entry as invalid YAML
    flow = tmp_path / "flow.yaml"
    flow.write_text("# empty for now\nsources: {}  # none yet\n")
    assert add_entry(flow, "new", entry) is True
    assert yaml.safe_load(flow.read_text()) == {"sources": {"new": entry}}
    assert "# empty for now" in flow.read_text() and "# none yet" in flow.read_text()
    # another top-level key after sources: appending would file the entry under it; rewritten
    after = tmp_path / "after.yaml"
    after.write_text("sources:\n  mine: {description: x}\nextra: {keep: 1}\n")
    assert add_entry(after, "new", entry) is False
    assert yaml.safe_load(after.read_text()) == {
        "sources": {"mine": {"description": "x"}, "new": entry},
        "extra": {"keep": 1},
    }
    # a missing file is created; a name already there is refused and the file left alone
    fresh = tmp_path / "fresh.yaml"
    assert add_entry(fresh, "new", entry) is True and yaml.safe_load(fresh.read_text()) == {
        "sources": {"new": entry}
    }
    before = block.read_text()
    with pytest.raises(CatalogError, match=r"block.yaml: source 'new' is already there"):
        add_entry(block, "new", entry)
    assert block.read_text() == before
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [1, 2]\n")
    with pytest.raises(CatalogError, match=r"bad.yaml: expected a top-level 'sources:' mapping"):
        add_entry(bad, "new", entry)
